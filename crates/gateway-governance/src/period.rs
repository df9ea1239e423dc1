//! Budget periods aligned to UTC calendar boundaries.
//!
//! `1h` resets at the top of every UTC hour, `1d` at 00:00 UTC, `1w` at Monday 00:00 UTC (ISO
//! weeks), `1M` at 00:00 UTC on the first of the month. No period is a lifetime cap that never
//! resets. Aligned periods (rather than rolling ones from the key's creation) make every instance,
//! and every level of the hierarchy, agree on when a budget resets without storing anything.

use std::fmt;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// How often a budget resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Period {
    /// Every UTC hour (`1h`).
    Hour,
    /// Every UTC day (`1d`).
    Day,
    /// Every ISO week, from Monday 00:00 UTC (`1w`).
    Week,
    /// Every calendar month, from the 1st 00:00 UTC (`1M`).
    Month,
    /// Never: a lifetime cap.
    #[default]
    Lifetime,
}

impl Period {
    /// Parses `1h`, `1d`, `1w` or `1M`; `None` means a lifetime cap.
    pub fn parse(s: Option<&str>) -> Result<Period, String> {
        match s.map(str::trim) {
            None => Ok(Period::Lifetime),
            Some("1h") => Ok(Period::Hour),
            Some("1d") => Ok(Period::Day),
            Some("1w") => Ok(Period::Week),
            Some("1M") => Ok(Period::Month),
            Some(other) => Err(format!(
                "unknown period {other:?}: use 1h, 1d, 1w or 1M (1m would be a minute; months are 1M), or leave it out for a lifetime cap"
            )),
        }
    }

    /// The configuration spelling (`1h`...), `None` for a lifetime cap.
    pub fn as_config(self) -> Option<&'static str> {
        match self {
            Period::Hour => Some("1h"),
            Period::Day => Some("1d"),
            Period::Week => Some("1w"),
            Period::Month => Some("1M"),
            Period::Lifetime => None,
        }
    }

    /// A stable label used in storage keys.
    pub fn label(self) -> &'static str {
        self.as_config().unwrap_or("lifetime")
    }

    /// Start (inclusive) and end (exclusive, `None` for lifetime) of the period containing `now_ms`.
    pub fn bounds(self, now_ms: i64) -> (i64, Option<i64>) {
        match self {
            Period::Lifetime => (0, None),
            Period::Hour => {
                let start = now_ms.div_euclid(HOUR_MS) * HOUR_MS;
                (start, Some(start + HOUR_MS))
            }
            Period::Day => {
                let start = now_ms.div_euclid(DAY_MS) * DAY_MS;
                (start, Some(start + DAY_MS))
            }
            Period::Week => {
                let days = now_ms.div_euclid(DAY_MS);
                // 1970-01-01 was a Thursday: days since the previous Monday.
                let since_monday = (days + 3).rem_euclid(7);
                let start = (days - since_monday) * DAY_MS;
                (start, Some(start + 7 * DAY_MS))
            }
            Period::Month => {
                let days = now_ms.div_euclid(DAY_MS);
                let (y, m, _) = civil_from_days(days);
                let start = days_from_civil(y, m, 1) * DAY_MS;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start, Some(days_from_civil(ny, nm, 1) * DAY_MS))
            }
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Period::Hour => "per hour",
            Period::Day => "per day",
            Period::Week => "per week",
            Period::Month => "per month",
            Period::Lifetime => "lifetime",
        })
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
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

/// Formats milliseconds since the epoch as RFC 3339 UTC (`2026-11-24T00:00:00Z`).
pub fn rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS) / 1000;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, m: u32, d: u32, h: i64) -> i64 {
        days_from_civil(y, m, d) * DAY_MS + h * HOUR_MS
    }

    #[test]
    fn parse_accepts_the_four_periods_and_none() {
        assert_eq!(Period::parse(Some("1h")), Ok(Period::Hour));
        assert_eq!(Period::parse(Some("1M")), Ok(Period::Month));
        assert_eq!(Period::parse(None), Ok(Period::Lifetime));
        assert!(
            Period::parse(Some("1m")).is_err(),
            "1m is ambiguous and must be refused"
        );
    }

    #[test]
    fn civil_round_trips() {
        for days in [-1000, 0, 59, 60, 365, 11_000, 20_000, 20_500] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "day {days} -> {y}-{m}-{d}");
        }
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(at(2026, 11, 24, 13) + 61_000),
            "2026-11-24T13:01:01Z"
        );
    }

    #[test]
    fn bounds_align_to_utc_boundaries() {
        let now = at(2026, 11, 26, 13) + 5_000; // Thursday 13:00:05
        assert_eq!(
            Period::Hour.bounds(now),
            (at(2026, 11, 26, 13), Some(at(2026, 11, 26, 14)))
        );
        assert_eq!(
            Period::Day.bounds(now),
            (at(2026, 11, 26, 0), Some(at(2026, 11, 27, 0)))
        );
        assert_eq!(
            Period::Week.bounds(now),
            (at(2026, 11, 23, 0), Some(at(2026, 11, 30, 0))),
            "ISO weeks start on Monday"
        );
        assert_eq!(
            Period::Month.bounds(now),
            (at(2026, 11, 1, 0), Some(at(2026, 12, 1, 0)))
        );
        assert_eq!(
            Period::Month.bounds(at(2026, 12, 31, 23)),
            (at(2026, 12, 1, 0), Some(at(2027, 1, 1, 0)))
        );
        assert_eq!(Period::Lifetime.bounds(now), (0, None));
    }
}
