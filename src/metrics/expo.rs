//! The exposition formats: Prometheus text 0.0.4 (the default) and
//! OpenMetrics 1.0 (when the scraper's Accept header asks for it).
//!
//! Written here rather than with a crate: `prometheus-client` writes only
//! OpenMetrics and `prometheus` only the 0.0.4 text, and neither can mirror
//! the kernel's absolute counters without a custom collector; the two formats
//! differ in four places (counter family names, info type, HELP escaping,
//! `# EOF`), all in this file and checked by promtool and a real Prometheus.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Which format a scrape gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics only when named
    /// (and not refused with q=0); anything else gets the text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(a) = accept else {
            return Format::Text;
        };
        for part in a.split(',') {
            let mut it = part.split(';');
            let media = it.next().unwrap_or("").trim();
            if !media.eq_ignore_ascii_case("application/openmetrics-text") {
                continue;
            }
            let refused = it.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if !refused {
                return Format::OpenMetrics;
            }
        }
        Format::Text
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    /// A constant 1 whose labels carry the facts (`*_info`).
    Info,
}

/// One metric family: its samples, already bounded by the caller.
pub struct Family<'a> {
    /// The sample name as scraped (`ctrace_insert_failures_total`,
    /// `ctrace_build_info`).
    pub name: Cow<'a, str>,
    pub help: Cow<'a, str>,
    pub ty: Type,
    pub labels: &'a [&'a str],
    /// (label values in `labels` order, value)
    pub samples: Vec<(Vec<String>, u64)>,
}

fn escape_value(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(s: &str, f: Format, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if f == Format::OpenMetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Writes the families in `f`; OpenMetrics ends with `# EOF`.
pub fn encode(families: &[Family], f: Format) -> String {
    let mut out = String::with_capacity(8192);
    for fam in families {
        // OpenMetrics names the family without the sample's suffix
        let family_name = match (f, fam.ty) {
            (Format::OpenMetrics, Type::Counter) => fam.name.trim_end_matches("_total"),
            (Format::OpenMetrics, Type::Info) => fam.name.trim_end_matches("_info"),
            _ => &fam.name[..],
        };
        let ty = match (f, fam.ty) {
            (_, Type::Counter) => "counter",
            (_, Type::Gauge) | (Format::Text, Type::Info) => "gauge",
            (Format::OpenMetrics, Type::Info) => "info",
        };
        let mut help = String::new();
        escape_help(&fam.help, f, &mut help);
        let _ = writeln!(out, "# HELP {family_name} {help}");
        let _ = writeln!(out, "# TYPE {family_name} {ty}");
        for (values, v) in &fam.samples {
            out.push_str(&fam.name);
            if !fam.labels.is_empty() {
                out.push('{');
                for (i, (k, val)) in fam.labels.iter().zip(values).enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(k);
                    out.push_str("=\"");
                    escape_value(val, &mut out);
                    out.push('"');
                }
                out.push('}');
            }
            let _ = writeln!(out, " {v}");
        }
    }
    if f == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_chooses_the_format() {
        assert_eq!(Format::from_accept(None), Format::Text);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        // what Prometheus 2.x sends
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prom)), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text; q=0")),
            Format::Text
        );
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4")),
            Format::Text
        );
    }

    #[test]
    fn both_formats_name_counters_and_info_their_way() {
        let fams = [
            Family {
                name: "x_total".into(),
                help: "a \"quoted\" \\ help\nline".into(),
                ty: Type::Counter,
                labels: &["a"],
                samples: vec![(vec!["v\"\\\n".into()], 3)],
            },
            Family {
                name: "x_info".into(),
                help: "h".into(),
                ty: Type::Info,
                labels: &["version"],
                samples: vec![(vec!["1".into()], 1)],
            },
        ];
        let t = encode(&fams, Format::Text);
        assert_eq!(
            t,
            "# HELP x_total a \"quoted\" \\\\ help\\nline\n# TYPE x_total counter\nx_total{a=\"v\\\"\\\\\\n\"} 3\n\
# HELP x_info h\n# TYPE x_info gauge\nx_info{version=\"1\"} 1\n"
        );
        let o = encode(&fams, Format::OpenMetrics);
        assert!(
            o.starts_with("# HELP x a \\\"quoted\\\" \\\\ help\\nline\n# TYPE x counter\nx_total{")
        );
        assert!(o.contains("# TYPE x info\nx_info{version=\"1\"} 1\n"));
        assert!(o.ends_with("# EOF\n"));
    }
}
