//! Small text formats shared by the dialects: Go durations, RFC 3339 instants, JSON string literals.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A JSON string literal (quoted and escaped) for `s`.
pub(crate) fn js(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Formats a duration the way Go's `time.Duration.String()` does, at millisecond precision:
/// `0s`, `20ms`, `1s`, `59.5s`, `6m0s`, `1h2m3.5s` (OpenAI's `x-ratelimit-reset-*` format).
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let hours = ms / 3_600_000;
    let minutes = (ms / 60_000) % 60;
    let sec_ms = ms % 60_000;
    let mut secs = format!("{}", sec_ms / 1000);
    let frac = sec_ms % 1000;
    if frac != 0 {
        let f = format!("{frac:03}");
        secs.push('.');
        secs.push_str(f.trim_end_matches('0'));
    }
    if hours > 0 {
        format!("{hours}h{minutes}m{secs}s")
    } else if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Whole seconds, rounded up, at least 1 (for `retry-after`).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// (year, month, day) to days since 1970-01-01 (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2025-08-21T12:40:59Z` for a Unix time in seconds.
pub(crate) fn rfc3339(unix_secs: u64) -> String {
    let secs = i64::try_from(unix_secs).unwrap_or(0);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parses an AWS `x-amz-date` (`20250101T120000Z`) into Unix seconds.
pub(crate) fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let y = num(0..4)?;
    let mo = u32::try_from(num(4..6)?).ok()?;
    let d = u32::try_from(num(6..8)?).ok()?;
    let h = num(9..11)?;
    let mi = num(11..13)?;
    let se = num(13..15)?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_match_go_formatting() {
        let cases = [
            (0, "0s"),
            (20, "20ms"),
            (999, "999ms"),
            (1000, "1s"),
            (59_500, "59.5s"),
            (60_000, "1m0s"),
            (360_000, "6m0s"),
            (3_723_500, "1h2m3.5s"),
            (1_250, "1.25s"),
        ];
        for (ms, want) in cases {
            assert_eq!(go_duration(Duration::from_millis(ms)), want, "{ms} ms");
        }
    }

    #[test]
    fn rfc3339_and_amz_dates_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_755_780_059), "2025-08-21T12:40:59Z");
        assert_eq!(parse_amz_date("20250821T124059Z"), Some(1_755_780_059));
        assert_eq!(parse_amz_date("2025-08-21"), None);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(6_001)), 7);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
    }
}
