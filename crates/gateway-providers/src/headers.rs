//! Rate-limit headers into [`RateLimitInfo`].
//!
//! One parser reads every dialect the gateway talks to, since the header names do not collide:
//! - OpenAI, Groq, Azure, Mistral, Together...: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
//!   with resets as Go durations (`6m0s`, `59.5s`, `20ms`) or bare seconds;
//! - older Azure: `x-rate-limit-reset-tokens: 55` (bare seconds);
//! - Anthropic: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
//!   with RFC 3339 resets, turned into durations from the response time (for tokens the most
//!   constrained of the three token windows is kept);
//! - `retry-after` (seconds or an HTTP date) and `retry-after-ms` (milliseconds, Azure and OpenAI):
//!   the largest applies.
//!
//! `x-should-retry` is read separately by [`should_retry`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_core::ratelimit::parse_go_duration;
use gateway_core::RateLimitInfo;
use http::HeaderMap;

/// Parses the rate-limit headers of a response received now.
pub fn rate_limit_info(headers: &HeaderMap) -> RateLimitInfo {
    rate_limit_info_at(headers, SystemTime::now())
}

/// Parses the rate-limit headers of a response received at `now` (absolute resets and HTTP dates
/// are turned into durations from it).
pub fn rate_limit_info_at(headers: &HeaderMap, now: SystemTime) -> RateLimitInfo {
    // One pass over the headers (names are lowercase in a `HeaderMap`), keeping the first usable
    // value of each; most responses carry a handful of these among a dozen others.
    let mut info = RateLimitInfo::default();
    let mut alt_reset_requests = None;
    let mut alt_reset_tokens = None;
    // Anthropic: requests, tokens, input-tokens, output-tokens.
    let mut windows: [Window; 4] = Default::default();
    let mut any_retry_hint = false;
    for (name, value) in headers {
        let n = name.as_str();
        let Some(v) = value.to_str().ok().map(str::trim).filter(|v| !v.is_empty()) else {
            continue;
        };
        if let Some(rest) = n.strip_prefix("x-ratelimit-") {
            match rest {
                "limit-requests" => set(&mut info.limit_requests, int_of(v)),
                "remaining-requests" => set(&mut info.remaining_requests, int_of(v)),
                "reset-requests" => set(&mut info.reset_requests, parse_go_duration(v)),
                "limit-tokens" => set(&mut info.limit_tokens, int_of(v)),
                "remaining-tokens" => set(&mut info.remaining_tokens, int_of(v)),
                "reset-tokens" => set(&mut info.reset_tokens, parse_go_duration(v)),
                _ => {}
            }
        } else if let Some(rest) = n.strip_prefix("x-rate-limit-") {
            match rest {
                "reset-requests" => set(&mut alt_reset_requests, parse_go_duration(v)),
                "reset-tokens" => set(&mut alt_reset_tokens, parse_go_duration(v)),
                _ => {}
            }
        } else if let Some(rest) = n.strip_prefix("anthropic-ratelimit-") {
            let Some((kind, field)) = rest.rsplit_once('-') else {
                continue;
            };
            let w = match kind {
                "requests" => &mut windows[0],
                "tokens" => &mut windows[1],
                "input-tokens" => &mut windows[2],
                "output-tokens" => &mut windows[3],
                _ => continue,
            };
            match field {
                "limit" => set(&mut w.limit, int_of(v)),
                "remaining" => set(&mut w.remaining, int_of(v)),
                "reset" => set(
                    &mut w.reset,
                    parse_rfc3339(v)
                        .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
                        .or_else(|| parse_go_duration(v)),
                ),
                _ => {}
            }
        } else if n == "retry-after" || n == "retry-after-ms" {
            any_retry_hint = true;
        }
    }
    if any_retry_hint {
        info.retry_after = retry_after_at(headers, now);
    }
    info.reset_tokens = info.reset_tokens.or(alt_reset_tokens);
    info.reset_requests = info.reset_requests.or(alt_reset_requests);

    // Anthropic.
    let [requests, tokens, input, output] = windows;
    if info.limit_requests.is_none() && info.remaining_requests.is_none() {
        info.limit_requests = requests.limit;
        info.remaining_requests = requests.remaining;
        info.reset_requests = info.reset_requests.or(requests.reset);
    }
    if info.limit_tokens.is_none() && info.remaining_tokens.is_none() {
        let tightest = [tokens, input, output]
            .into_iter()
            .filter(|w| w.remaining.is_some() || w.limit.is_some())
            .min_by(|a, b| a.fraction().total_cmp(&b.fraction()));
        if let Some(w) = tightest {
            info.limit_tokens = w.limit;
            info.remaining_tokens = w.remaining;
            info.reset_tokens = info.reset_tokens.or(w.reset);
        }
    }
    info
}

/// Keeps the first value found.
fn set<T>(slot: &mut Option<T>, v: Option<T>) {
    if slot.is_none() {
        *slot = v;
    }
}

/// The explicit wait hint of a response: the larger of `retry-after-ms` and `retry-after`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

/// [`retry_after`] with an explicit response time (for HTTP dates).
pub fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let ms = text(headers, "retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| Duration::from_secs_f64(v / 1000.0));
    let secs = text(headers, "retry-after").and_then(|v| {
        if let Ok(s) = v.parse::<f64>() {
            return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s));
        }
        let at = httpdate::parse_http_date(v).ok()?;
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    });
    ms.max(secs)
}

/// The `x-should-retry` header: `Some(true)` or `Some(false)` when the provider says whether to
/// retry, `None` otherwise.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    match text(headers, "x-should-retry")?
        .to_ascii_lowercase()
        .as_str()
    {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Parses an RFC 3339 timestamp (`2025-08-21T12:40:59Z`, `2025-08-21T12:40:59.5+02:00`) into a
/// system time.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim().as_bytes();
    if s.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = std::str::from_utf8(s.get(r)?).ok()?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't' | b' ') {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if s[13] != b':' || s[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u64;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        let digits = std::str::from_utf8(&s[start..i]).ok()?;
        if digits.is_empty() {
            return None;
        }
        let mut padded: String = digits.chars().take(9).collect();
        while padded.len() < 9 {
            padded.push('0');
        }
        nanos = padded.parse().ok()?;
    }
    let offset_secs: i64 = match s.get(i..)? {
        b"Z" | b"z" => 0,
        tz if tz.len() == 6 && matches!(tz[0], b'+' | b'-') && tz[3] == b':' => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            let sign = if tz[0] == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, u32::try_from(nanos).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[derive(Default)]
struct Window {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<Duration>,
}

impl Window {
    fn fraction(&self) -> f64 {
        match (self.remaining, self.limit) {
            (Some(r), Some(l)) if l > 0 => r as f64 / l as f64,
            (Some(0), _) => 0.0,
            _ => 1.0,
        }
    }
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn int_of(v: &str) -> Option<u64> {
    v.parse::<u64>().ok().or_else(|| {
        // Some servers send `1000.0`.
        v.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("valid header"));
        }
        h
    }

    fn at(s: &str) -> SystemTime {
        parse_rfc3339(s).expect("valid timestamp")
    }

    #[test]
    fn openai_and_groq_headers() {
        let h = map(&[
            ("x-ratelimit-limit-requests", "14400"),
            ("x-ratelimit-remaining-requests", "14370"),
            ("x-ratelimit-reset-requests", "2m59.56s"),
            ("x-ratelimit-limit-tokens", "30000"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "644ms"),
        ]);
        let info = rate_limit_info(&h);
        assert_eq!(
            info,
            RateLimitInfo {
                limit_requests: Some(14400),
                remaining_requests: Some(14370),
                reset_requests: Some(Duration::from_secs_f64(179.56)),
                limit_tokens: Some(30000),
                remaining_tokens: Some(0),
                reset_tokens: Some(Duration::from_millis(644)),
                retry_after: None,
            }
        );
        // 30000 tokens refill in 644 ms: a typical request's 1000 tokens free after 1/30 of it.
        assert_eq!(
            info.wait_hint(),
            Some(Duration::from_millis(644).mul_f64(1.0 / 30.0))
        );
    }

    #[test]
    fn azure_headers() {
        let h = map(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-remaining-tokens", "1200"),
            ("x-rate-limit-reset-tokens", "55"),
            ("retry-after", "6"),
            ("retry-after-ms", "6500"),
        ]);
        let info = rate_limit_info(&h);
        assert_eq!(info.remaining_requests, Some(0));
        assert_eq!(
            info.reset_tokens,
            Some(Duration::from_secs(55)),
            "bare seconds"
        );
        assert_eq!(
            info.retry_after,
            Some(Duration::from_millis(6500)),
            "largest hint wins"
        );
    }

    #[test]
    fn anthropic_headers_become_relative() {
        let now = at("2025-08-21T12:40:00Z");
        let h = map(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2025-08-21T12:40:59Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "0"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2025-08-21T12:40:30.5Z",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "8000"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2025-08-21T12:41:00Z",
            ),
            ("anthropic-ratelimit-tokens-limit", "48000"),
            ("anthropic-ratelimit-tokens-remaining", "8000"),
            ("anthropic-ratelimit-tokens-reset", "2025-08-21T12:41:00Z"),
            ("retry-after", "31"),
        ]);
        let info = rate_limit_info_at(&h, now);
        assert_eq!(info.limit_requests, Some(50));
        assert_eq!(info.remaining_requests, Some(49));
        assert_eq!(info.reset_requests, Some(Duration::from_secs(59)));
        assert_eq!(
            (info.limit_tokens, info.remaining_tokens, info.reset_tokens),
            (Some(40000), Some(0), Some(Duration::from_millis(30500))),
            "the tightest token window (input) is kept"
        );
        assert_eq!(info.retry_after, Some(Duration::from_secs(31)));
        // A reset in the past is zero, not an error.
        let later = at("2025-08-21T13:00:00Z");
        assert_eq!(
            rate_limit_info_at(&h, later).reset_requests,
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = at("2015-10-21T07:28:00Z");
        let h = map(&[("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT")]);
        assert_eq!(
            retry_after_at(&h, now),
            Some(Duration::from_secs(30)),
            "HTTP date"
        );
        assert_eq!(
            retry_after(&map(&[("retry-after", "1.5")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&map(&[("retry-after-ms", "250.0")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_after(&map(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn should_retry_header() {
        assert_eq!(
            should_retry(&map(&[("x-should-retry", "true")])),
            Some(true)
        );
        assert_eq!(
            should_retry(&map(&[("x-should-retry", "False")])),
            Some(false)
        );
        assert_eq!(should_retry(&map(&[("x-should-retry", "maybe")])), None);
        assert_eq!(should_retry(&HeaderMap::new()), None);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(
            parse_rfc3339("2025-08-21T14:40:59+02:00"),
            parse_rfc3339("2025-08-21T12:40:59Z")
        );
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:00.25Z")
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok()),
            Some(Duration::from_millis(951_868_800_250))
        );
        assert_eq!(parse_rfc3339("2025-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn empty_headers_are_empty_info() {
        assert!(rate_limit_info(&HeaderMap::new()).is_empty());
    }
}
