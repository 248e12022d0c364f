//! The window probe's reason wording: the kernel's own text where the kernel
//! has one (kprobe reads nf_tcp_log_invalid's format and bound), the typed log
//! of Debian's 6.1/6.12 in the kernel's words, and ours otherwise. Also the
//! class of each verdict (which bound it crossed), by code, so that findings
//! never parse text.

use crate::abi::{reason, win_log};
use crate::event::WindowLog;

/// The wording of a window reason code; None for codes this probe does not own.
/// `ty`: the typed log's type (with `reason::WIN_TYPED`).
pub fn text(code: u32, kernel_text: &str, bound: u32, ty: u32) -> Option<String> {
    Some(match code {
        reason::WIN_TEXT => expand_format(kernel_text, bound),
        reason::WIN_NO_CT => {
            "no conntrack entry after conntrack: INVALID (stable mode cannot see the reason)".into()
        }
        reason::WIN_UNLOGGED => "INVALID (the kernel logged no reason)".into(),
        reason::WIN_NOTEXT => {
            "out of window (fentry cannot read the kernel's reason text here: use --mode kprobe)"
                .into()
        }
        reason::WIN_TYPED => typed(ty, bound),
        _ => return None,
    })
}

/// The wording the kernel logs for each `enum nf_tcp_invalid_log_type`.
fn typed(ty: u32, bound: u32) -> String {
    match ty {
        win_log::LEN_LONG => format!("{bound} bytes more than expected"),
        win_log::SEQ_OVER => {
            format!("SEQ is over upper bound {bound} (over the window of the receiver)")
        }
        win_log::ACK_OVER => format!("ACK is over upper bound {bound} (ACKed data not seen yet)"),
        win_log::SEQ_UNDER => {
            format!("SEQ is under lower bound {bound} (already ACKed data retransmitted)")
        }
        win_log::ACK_UNDER => {
            format!("ignored ACK under lower bound {bound} (possible overly delayed)")
        }
        t => format!("window verdict type {t}, bound {bound}"),
    }
}

/// Which bound a verdict crossed, from its code: the typed log's type, or the
/// kernel's own format string (kprobe). None where the mode cannot tell.
pub fn class(code: u32, kernel_text: &str, ty: u32) -> Option<WindowLog> {
    match code {
        reason::WIN_TYPED => match ty {
            win_log::LEN_LONG => Some(WindowLog::LenLong),
            win_log::SEQ_OVER => Some(WindowLog::SeqOver),
            win_log::ACK_OVER => Some(WindowLog::AckOver),
            win_log::SEQ_UNDER => Some(WindowLog::SeqUnder),
            win_log::ACK_UNDER => Some(WindowLog::AckUnder),
            _ => None,
        },
        reason::WIN_TEXT => class_of_kernel_text(kernel_text),
        _ => None,
    }
}

/// The kernel's format strings of nf_tcp_log_invalid (6.1+ and older forms)
/// by the bound they name. Used on the kernel's own text, as read at the hook,
/// and on reasons of recordings made before events carried `window_log`.
pub fn class_of_kernel_text(t: &str) -> Option<WindowLog> {
    let r = t.to_ascii_lowercase();
    let seq = r.contains("seq");
    if r.contains("more than expected") {
        Some(WindowLog::LenLong)
    } else if r.contains("upper bound") && r.contains("over") {
        Some(if seq {
            WindowLog::SeqOver
        } else {
            WindowLog::AckOver
        })
    } else if r.contains("lower bound") && (r.contains("under") || r.contains("ignored")) {
        Some(if seq {
            WindowLog::SeqUnder
        } else {
            WindowLog::AckUnder
        })
    } else {
        None
    }
}

/// The kernel logs "SEQ is over upper bound %u (over the window of the receiver)":
/// print it as the kernel would, with the bound filled in.
fn expand_format(fmt: &str, bound: u32) -> String {
    let mut out = String::with_capacity(fmt.len() + 10);
    let mut it = fmt.chars().peekable();
    let mut used = false;
    while let Some(c) = it.next() {
        if c == '%' && !used {
            // skip the conversion: flags, width, length, and the letter
            while let Some(&n) = it.peek() {
                it.next();
                if n.is_ascii_alphabetic() && !matches!(n, 'l' | 'h' | 'z') {
                    break;
                }
            }
            out.push_str(&bound.to_string());
            used = true;
        } else {
            out.push(c);
        }
    }
    out.trim_end_matches('\n').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_texts_classify_by_bound() {
        for (t, c) in [
            (
                "SEQ is over upper bound %u (over the window of the receiver)",
                WindowLog::SeqOver,
            ),
            (
                "ACK is over upper bound %u (ACKed data not seen yet)",
                WindowLog::AckOver,
            ),
            (
                "SEQ is under lower bound %u (already ACKed data retransmitted)",
                WindowLog::SeqUnder,
            ),
            (
                "ignored ACK under lower bound %u (possible overly delayed)",
                WindowLog::AckUnder,
            ),
            ("%u bytes more than expected", WindowLog::LenLong),
        ] {
            assert_eq!(class_of_kernel_text(t), Some(c), "{t}");
        }
        assert_eq!(class_of_kernel_text("invalid RST"), None);
    }
}
