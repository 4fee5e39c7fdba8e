//! Quantities people type on the command line (memory sizes, CPU, durations) and how they are
//! shown back.
//!
//! The parsers return a sentence on error because clap prints it after
//! `error: invalid value '...' for '--memory <SIZE>':`.

use std::time::Duration;

use hodei_contract::duration;
use hodei_domain::Resources;

/// Bytes from `536870912`, `512Mi`, `1Gi`, `1.5Gi`, `500M`, `64k`, `2GiB`, `100MB`.
///
/// Binary suffixes (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`) are powers of 1024 and decimal ones (`k`/`K`,
/// `M`, `G`, `T`, `P`) powers of 1000, as in Kubernetes; a trailing `B` is allowed. Lowercase
/// `m` and `g` are refused because Docker reads them as binary and Kubernetes `m` as "milli".
pub fn parse_memory(input: &str) -> Result<u64, String> {
    let text = input.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "{input:?} is not a size; write bytes or a number with a unit, e.g. 512Mi, 1Gi, 500M"
        ));
    }
    let unit = unit.trim_start();
    let unit = unit.strip_suffix('B').unwrap_or(unit);
    let multiplier: u128 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "m" | "mi" | "g" | "gi" => {
            let letter = unit[..1].to_ascii_uppercase();
            return Err(format!(
                "unit {unit:?} is ambiguous; write {number}{letter}i (binary) or {number}{letter} \
                 (decimal)"
            ));
        }
        other => {
            return Err(format!(
                "unknown unit {other:?}; use Ki, Mi, Gi, Ti (1024) or k, M, G, T (1000)"
            ));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(format!("{input:?} is not a number"));
    }
    let too_big = || format!("{input:?} is too large");
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_big())?
    };
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_big)?;
    if !fraction.is_empty() {
        if fraction.len() > 18 {
            return Err(format!("{input:?} has too many decimals"));
        }
        let digits: u128 = fraction.parse().map_err(|_| too_big())?;
        let scale = 10u128.pow(fraction.len() as u32);
        let scaled = digits * multiplier;
        if !scaled.is_multiple_of(scale) {
            return Err(format!("{input:?} is not a whole number of bytes"));
        }
        bytes = bytes.checked_add(scaled / scale).ok_or_else(too_big)?;
    }
    u64::try_from(bytes).map_err(|_| too_big())
}

/// `--memory`: a size with a unit (a bare number is refused: `--memory 512` once meant 512
/// bytes, a limit no worker can start in), within the bounds every server applies
/// ([`Resources::validate`]). `0` means no limit; `16777216B` spells bytes.
pub fn parse_memory_limit(input: &str) -> Result<u64, String> {
    let bytes = parse_memory(input)?;
    let text = input.trim();
    if bytes != 0 && text.ends_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "{text:?} has no unit; write {text}Mi (mebibytes), {text}M (megabytes) or {text}B \
             (bytes)"
        ));
    }
    let min = Resources::MIN_MEMORY_BYTES;
    if bytes != 0 && bytes < min {
        return Err(format!(
            "{text} is below the {} a worker needs to run in; ask for at least {}, or 0 for no \
             limit",
            format_memory(min),
            format_memory(min)
        ));
    }
    if bytes > Resources::MAX_MEMORY_BYTES {
        return Err(format!(
            "{text} is above the maximum of {}",
            format_memory(Resources::MAX_MEMORY_BYTES)
        ));
    }
    Ok(bytes)
}

/// `536870912` → `512Mi`; sizes that are not a whole number of KiB stay in bytes.
pub fn format_memory(bytes: u64) -> String {
    const UNITS: [(&str, u32); 5] = [("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
    for (suffix, shift) in UNITS {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Thousandths of a core from `500` or `500m`, within the bounds every server applies
/// ([`Resources::validate`]); `0` means no limit.
pub fn parse_cpu_millis(input: &str) -> Result<u32, String> {
    let text = input.trim();
    let digits = text.strip_suffix('m').unwrap_or(text);
    let millis: u32 = digits.parse().map_err(|_| {
        format!("{input:?} is not a CPU amount; write thousandths of a core, e.g. 500 or 500m")
    })?;
    let (min, max) = (Resources::MIN_CPU_MILLIS, Resources::MAX_CPU_MILLIS);
    if millis != 0 && millis < min {
        return Err(format!(
            "{text} is {millis} thousandths of a core, below the {min} a worker needs; ask for \
             at least {min} (1000 is one core), or 0 for no limit"
        ));
    }
    if millis > max {
        return Err(format!(
            "{text} is above the maximum of {max} ({} cores)",
            max / 1000
        ));
    }
    Ok(millis)
}

/// Whole seconds, in the one duration grammar of [`hodei_contract::duration`] (`90`, `90s`,
/// `5m`, `1h30m`, `1d`). A job's timeout is counted in whole seconds, so a fraction is refused
/// rather than rounded; zero too, see [`parse_duration`].
pub fn parse_seconds(input: &str) -> Result<u64, String> {
    let duration = parse_duration(input)?;
    if duration.subsec_nanos() != 0 {
        return Err(format!("{input:?} is not a whole number of seconds"));
    }
    Ok(duration.as_secs())
}

/// A positive duration, in the one duration grammar of [`hodei_contract::duration`]. Zero is
/// refused because the server takes a present timeout to mean "this long", and zero would end
/// the job (or the connection attempt) at once.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let duration = duration::parse(input)?;
    if duration.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(duration)
}

/// `5400` → `1h30m`, `42` → `42s`.
pub fn format_seconds(seconds: u64) -> String {
    if seconds == 0 {
        return "0s".to_owned();
    }
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (hours, rest) = (rest / 3_600, rest % 3_600);
    let (minutes, secs) = (rest / 60, rest % 60);
    let mut out = String::new();
    for (value, unit) in [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse_memory("536870912"), Ok(536_870_912));
        assert_eq!(parse_memory("0"), Ok(0));
    }

    #[test]
    fn binary_and_decimal_suffixes_follow_kubernetes() {
        assert_eq!(parse_memory("512Mi"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("500M"), Ok(500_000_000));
        assert_eq!(parse_memory("64k"), Ok(64_000));
        assert_eq!(parse_memory("64Ki"), Ok(65_536));
        assert_eq!(parse_memory("2T"), Ok(2_000_000_000_000));
    }

    #[test]
    fn a_trailing_b_and_fractions_are_accepted() {
        assert_eq!(parse_memory("2GiB"), Ok(2 << 30));
        assert_eq!(parse_memory("100MB"), Ok(100_000_000));
        assert_eq!(parse_memory("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(parse_memory(".5Ki"), Ok(512));
    }

    #[test]
    fn ambiguous_lowercase_units_are_refused_with_a_hint() {
        let err = parse_memory("512m").unwrap_err();
        assert!(err.contains("512Mi") && err.contains("512M"), "{err}");
        assert!(parse_memory("1g").unwrap_err().contains("1Gi"));
    }

    #[test]
    fn nonsense_sizes_are_refused() {
        for bad in [
            "",
            "Mi",
            "12X",
            "1.2.3M",
            "1.5",
            "99999999999999999999Pi",
            "-1",
            ".",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_memory_limit_needs_a_unit_so_512_is_not_silently_bytes() {
        let err = parse_memory_limit("512").unwrap_err();
        assert!(err.contains("no unit") && err.contains("512Mi"), "{err}");
        assert_eq!(parse_memory_limit("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory_limit("0"), Ok(0), "0 means no limit");
        assert_eq!(parse_memory_limit("16777216B"), Ok(16 << 20));
    }

    #[test]
    fn a_memory_limit_below_what_a_worker_runs_in_is_refused_with_the_floor() {
        for tiny in ["512B", "1Ki", "15Mi", "16M"] {
            let err = parse_memory_limit(tiny).unwrap_err();
            assert!(err.contains("at least 16Mi"), "{tiny}: {err}");
        }
        assert_eq!(parse_memory_limit("16Mi"), Ok(16 << 20));
        assert!(
            parse_memory_limit("5Ti")
                .unwrap_err()
                .contains("maximum of 4Ti")
        );
    }

    #[test]
    fn memory_is_shown_in_the_largest_exact_binary_unit() {
        assert_eq!(format_memory(512 << 20), "512Mi");
        assert_eq!(format_memory(1 << 30), "1Gi");
        assert_eq!(format_memory(1536 << 20), "1536Mi");
        assert_eq!(format_memory(500_000_000), "500000000");
        assert_eq!(format_memory(1000), "1000");
    }

    #[test]
    fn cpu_accepts_millis_with_or_without_m() {
        assert_eq!(parse_cpu_millis("500"), Ok(500));
        assert_eq!(parse_cpu_millis("1500m"), Ok(1500));
        assert_eq!(parse_cpu_millis("0"), Ok(0), "0 means no limit");
        assert!(parse_cpu_millis("0.5").is_err());
        assert!(parse_cpu_millis("-1").is_err());
    }

    #[test]
    fn cpu_below_a_tenth_of_a_core_is_refused_with_the_floor() {
        let err = parse_cpu_millis("1").unwrap_err();
        assert!(
            err.contains("at least 100") && err.contains("1000 is one core"),
            "{err}"
        );
        assert_eq!(parse_cpu_millis("100m"), Ok(100));
        assert!(parse_cpu_millis("2000000").unwrap_err().contains("maximum"));
    }

    #[test]
    fn durations_accept_units_and_refuse_zero() {
        assert_eq!(parse_seconds("90"), Ok(90));
        assert_eq!(parse_seconds("90s"), Ok(90));
        assert_eq!(parse_seconds("5m"), Ok(300));
        assert_eq!(parse_seconds("2h"), Ok(7200));
        assert!(parse_seconds("0").is_err());
        // The contract's grammar reads fractions; what the CLI refuses is a fraction of a second.
        assert_eq!(parse_seconds("1.5m"), Ok(90));
        assert!(parse_seconds("m").is_err());
        assert!(parse_seconds("99999999999999999999").is_err());
        assert!(parse_seconds("1500ms").is_err());
        assert_eq!(parse_seconds("1h30m"), Ok(5400));
    }

    #[test]
    fn seconds_are_shown_compactly() {
        assert_eq!(format_seconds(42), "42s");
        assert_eq!(format_seconds(5400), "1h30m");
        assert_eq!(format_seconds(90_061), "1d1h1m1s");
    }
}
