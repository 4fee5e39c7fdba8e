//! Timestamps as people read them: RFC 3339 in details and JSON, a relative age in tables.

use chrono::{DateTime, SecondsFormat, Utc};
use hodei_proto::Timestamp;

/// The instant of a wire timestamp; `None` when absent or out of range.
pub fn instant(timestamp: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    let ts = timestamp?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

/// `2024-05-01T12:00:00.250Z`, with as many fraction digits as needed.
pub fn rfc3339(timestamp: Option<&Timestamp>) -> Option<String> {
    instant(timestamp).map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// `2024-05-01T12:00:00Z`, whole seconds, for human output.
pub fn rfc3339_seconds(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `42s`, `5m`, `3h`, `12d`: the largest whole unit, as `kubectl get` shows ages. A time in the
/// future (clock skew between client and server) counts as `0s`.
pub fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let seconds = (now - then).num_seconds().max(0);
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m", s / 60),
        s if s < 48 * 3_600 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn ages_use_the_largest_whole_unit() {
        let now = Utc::now();
        let ago = |s: i64| age(now, now - TimeDelta::seconds(s));
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(59), "59s");
        assert_eq!(ago(60), "1m");
        assert_eq!(ago(3_599), "59m");
        assert_eq!(ago(3_600), "1h");
        assert_eq!(ago(47 * 3_600), "47h");
        assert_eq!(ago(3 * 86_400), "3d");
        assert_eq!(ago(-30), "0s");
    }

    #[test]
    fn timestamps_are_rfc3339_in_utc() {
        let ts = Timestamp {
            seconds: 1_714_564_800,
            nanos: 250_000_000,
        };
        assert_eq!(
            rfc3339(Some(&ts)).as_deref(),
            Some("2024-05-01T12:00:00.250Z")
        );
        assert_eq!(rfc3339(None), None);
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(rfc3339(Some(&bad)), None);
    }
}
