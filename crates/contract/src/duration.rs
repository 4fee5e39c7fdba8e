//! The one grammar for durations that people type, in `hodei-server`'s settings and in the
//! `hodei` CLI: a number of seconds (`90`), or numbers with units as `humantime` reads them
//! (`500ms`, `30s`, `5m`, `1h30m`, `2h 15m`, `1d`).

use std::time::Duration;

/// The longest duration accepted: 100 years (of 365.25 days, as `humantime` counts `100y`).
/// Settings are added together (a job's timeout, the kill grace, the provisioning timeout), so
/// each is kept far from `Duration`'s overflow.
pub const MAX: Duration = Duration::from_secs(100 * 31_557_600);

/// A sentence saying what is wrong with the input, for clap to print after
/// `invalid value '...' for '--flag <DURATION>':`.
pub fn parse(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    let parsed = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| too_long(input))
    } else {
        humantime::parse_duration(text).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => too_long(input),
            other => {
                format!("{input:?} is not a duration ({other}); write e.g. 500ms, 30s, 5m, 1h30m")
            }
        })
    }?;
    if parsed > MAX {
        return Err(too_long(input));
    }
    Ok(parsed)
}

fn too_long(input: &str) -> String {
    format!("{input:?} is too long; at most 100 years")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_seconds_and_units_combine() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2h 15m"), Ok(Duration::from_secs(8100)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn overflow_is_an_error_not_a_panic_or_a_wrap() {
        for input in [
            "99999999999999999h",
            "99999999999999999999",
            "18446744073709551615s",
            "101y",
            "9223372036854775807m",
        ] {
            let err = parse(input).unwrap_err();
            assert!(err.contains("too long"), "{input}: {err}");
        }
        assert_eq!(parse("100y").map(|d| d <= MAX), Ok(true));
    }

    #[test]
    fn nonsense_says_what_to_write() {
        for input in ["", "m", "5 parsecs", "1.5.3h", "-5s"] {
            let err = parse(input).unwrap_err();
            assert!(err.contains("not a duration"), "{input}: {err}");
        }
    }
}
