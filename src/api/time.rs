//! Timestamps as Kubernetes writes them: RFC 3339 in UTC with seconds (`2026-11-28T08:30:00Z`).

use std::time::{Duration, SystemTime};

pub fn now() -> String {
    format(SystemTime::now())
}

pub fn format(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn parse(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

/// How long ago `s` was, or `None` when it is empty or malformed.
pub fn age(s: &str) -> Option<Duration> {
    let t = parse(s)?;
    Some(SystemTime::now().duration_since(t).unwrap_or_default())
}

/// An age as kubectl prints it: `45s`, `3m12s`, `5h`, `2d3h`, `400d`.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..600 => {
            if s.is_multiple_of(60) {
                format!("{}m", s / 60)
            } else {
                format!("{}m{}s", s / 60, s % 60)
            }
        }
        600..10_800 => format!("{}m", s / 60),
        10_800..28_800 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        28_800..172_800 => format!("{}h", s / 3600),
        172_800..691_200 => {
            let (d, h) = (s / 86_400, (s % 86_400) / 3600);
            if h == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{h}h")
            }
        }
        691_200..31_536_000 => format!("{}d", s / 86_400),
        _ => format!("{}y{}d", s / 31_536_000, (s % 31_536_000) / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_print_like_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (9 * 3600, "9h"),
            (2 * 86_400 + 3600, "2d1h"),
            (40 * 86_400, "40d"),
        ] {
            assert_eq!(human_age(Duration::from_secs(secs)), want, "{secs}");
        }
    }

    #[test]
    fn timestamps_round_trip() {
        let t = now();
        assert!(t.ends_with('Z'), "{t}");
        assert!(age(&t).expect("parses") < Duration::from_secs(5));
        assert_eq!(age("yesterday"), None);
    }
}
