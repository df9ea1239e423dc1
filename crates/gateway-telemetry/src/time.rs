//! Time helpers for the admin API: RFC 3339 and unix milliseconds, window lengths (`1h`, `30m`).
//!
//! Civil-date arithmetic after Howard Hinnant's `days_from_civil` / `civil_from_days`, so no date
//! crate is needed for the two formats the API speaks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_core::observe::decimal_digits;

/// Milliseconds since the unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since the unix epoch of `t` (0 before the epoch).
pub(crate) fn system_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-05-01T12:00:00.123Z` for unix milliseconds. The log writer formats one per request, so
/// four-digit years are written digit by digit rather than through `format!` (about 3 k
/// instructions).
pub fn format_rfc3339_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u64;
    let (h, min, s, frac) = (sod / 3600, (sod / 60) % 60, sod % 60, ms % 1000);
    let year = match u64::try_from(y) {
        Ok(year) if year <= 9999 => year,
        _ => return format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{frac:03}Z"),
    };
    let mut out = *b"0000-00-00T00:00:00.000Z";
    for (at, width, v) in [
        (0, 4, year),
        (5, 2, u64::from(m)),
        (8, 2, u64::from(d)),
        (11, 2, h),
        (14, 2, min),
        (17, 2, s),
        (20, 3, frac),
    ] {
        decimal_digits(&mut out[at..at + width], v);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses unix milliseconds (`1714564800000`) or RFC 3339 (`2026-05-01T12:00:00Z`,
/// `2026-05-01T12:00:00.5+02:00`, `2026-05-01` as midnight UTC).
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (i64::from(num(0..4)?), num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let mut secs = days * 86_400;
    let mut ms = 0i64;
    if b.len() > 10 {
        if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if h > 23 || mi > 59 || se > 60 {
            return None;
        }
        secs += i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(se);
        let mut i = 19;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == start {
                return None;
            }
            let frac = &s[start..i.min(start + 3)];
            let scale = 10i64.pow(3 - frac.len() as u32);
            ms = frac.parse::<i64>().ok()? * scale;
        }
        match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => {}
            Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
                let off = i64::from(num(i + 1..i + 3)?) * 3600 + i64::from(num(i + 4..i + 6)?) * 60;
                secs -= if *sign == b'+' { off } else { -off };
            }
            _ => return None,
        }
    }
    u64::try_from(secs * 1000 + ms).ok()
}

/// Parses a window length: `90s`, `30m`, `1h`, `7d`, `500ms`, or bare seconds.
pub fn parse_window(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let secs = match &s[split..] {
        "" | "s" => n,
        "ms" => return Some(Duration::from_millis(n)),
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_digits_match_the_formatter() {
        let reference = |ms: u64| {
            let secs = (ms / 1000) as i64;
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let sod = secs.rem_euclid(86_400);
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                sod / 3600,
                (sod / 60) % 60,
                sod % 60,
                ms % 1000
            )
        };
        let mut ms: u64 = 1;
        while ms < 400_000_000_000_000 {
            for v in [ms, ms + 999, ms * 7 + 13] {
                assert_eq!(format_rfc3339_ms(v), reference(v), "{v}");
            }
            ms = ms * 3 + 1;
        }
        // 9999-12-31T23:59:59.999Z, then the first five-digit year.
        assert_eq!(
            format_rfc3339_ms(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            format_rfc3339_ms(253_402_300_800_000),
            "10000-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn rfc3339_round_trips_and_offsets_apply() {
        let ms = 1_714_564_800_123;
        let s = format_rfc3339_ms(ms);
        assert_eq!(s, "2024-05-01T12:00:00.123Z");
        assert_eq!(parse_time(&s), Some(ms));
        assert_eq!(parse_time("2024-05-01T14:00:00.123+02:00"), Some(ms));
        assert_eq!(parse_time("2024-05-01T12:00:00Z"), Some(ms - 123));
        assert_eq!(parse_time("2024-05-01"), Some(1_714_521_600_000));
        assert_eq!(parse_time("1714564800123"), Some(ms));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_time("2000-02-29T23:59:59.9Z"), Some(951_868_799_900));
        for bad in [
            "",
            "yesterday",
            "2024-13-01",
            "2024-05-01T12:00",
            "2024-05-01T12:00:00",
        ] {
            assert_eq!(parse_time(bad), None, "{bad} must not parse");
        }
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_window("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_window("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_window("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_window("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_window("1w"), None);
        assert_eq!(parse_window("h"), None);
    }
}
