//! The confirm probe's reason wording: how the insert at confirm ended, naming
//! the kernel counter it moves.

use crate::abi::reason;

pub fn text(code: u32) -> Option<&'static str> {
    Some(match code {
        reason::CONFIRM_CLASH => "clash with an existing entry, not resolved (insert_failed, drop)",
        reason::CONFIRM_DYING => "entry was dying at confirm (insert_failed)",
        reason::CONFIRM_DROP => "confirm dropped the packet: tuple already taken (insert_failed)",
        reason::CLASH_MERGED => "clash resolved: merged into the existing entry (clash_resolve)",
        reason::CLASH_NAT_HARDER => {
            "clash resolved: NAT clash, kept with IPS_NAT_CLASH (clash_resolve)"
        }
        _ => return None,
    })
}
