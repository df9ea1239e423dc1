//! `GET /admin/logs` and `GET /admin/stats` (the server checks the admin token before calling).
//!
//! - `GET /admin/logs?since=&until=&virtual_key=&provider=&model=&status=&limit=`: newest first,
//!   `{"data": [LogEntry...]}` with attempts nested. `since`/`until` take unix milliseconds or RFC
//!   3339; `provider` matches requests that tried or were served by it; `model` matches the
//!   requested or the upstream model; `status` is a code (`429`), a class (`5xx`) or `error`
//!   (400 and above); `limit` defaults to 100, at most 1000.
//! - `GET /admin/logs/{request_id}`: one request, 404 when unknown.
//! - `GET /admin/stats?window=1h` (or `window_secs=3600`, default one hour): per provider and key,
//!   attempts, error and 429 rates, p50/p99 latency, fallbacks, tokens and cost, plus what clients
//!   saw.
//!
//! Queries run on the blocking pool with the store's read connection.

use std::time::Duration;

use serde_json::{json, Value};

use crate::store::{LogQuery, StatusFilter};
use crate::time::{now_ms, parse_time, parse_window};

/// Default `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 1000;
/// Default stats window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes a query component (`+` stays `+`, so RFC 3339 offsets survive unencoded).
pub(crate) fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(key, value)` pairs of a query string, decoded.
pub(crate) fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// A 400 answer.
pub(crate) fn bad_request(message: String) -> (u16, Value) {
    (
        400,
        json!({"error": {"message": message, "type": "invalid_request_error"}}),
    )
}

fn status_filter(v: &str) -> Option<StatusFilter> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("error") || v.eq_ignore_ascii_case("errors") {
        return Some(StatusFilter::Error);
    }
    if v.len() == 3 && v[1..].eq_ignore_ascii_case("xx") {
        return v[..1]
            .parse::<u16>()
            .ok()
            .filter(|c| (1..=5).contains(c))
            .map(StatusFilter::Class);
    }
    v.parse::<u16>().ok().map(StatusFilter::Exact)
}

/// Parses `GET /admin/logs` parameters.
pub(crate) fn log_query(query: &str) -> Result<LogQuery, String> {
    let mut q = LogQuery {
        limit: DEFAULT_LIMIT,
        ..LogQuery::default()
    };
    for (k, v) in pairs(query) {
        let nonempty = || (!v.is_empty()).then(|| v.clone());
        let instant = |name: &str| {
            parse_instant(&v).ok_or_else(|| {
                format!("`{name}` must be unix seconds or milliseconds, or RFC 3339, got `{v}`")
            })
        };
        match k.as_str() {
            "since" | "from" | "start" | "start_time" | "after" => {
                q.since_ms = Some(instant("since")?);
            }
            "until" | "to" | "end" | "end_time" | "before" => {
                q.until_ms = Some(instant("until")?);
            }
            "virtual_key" | "key" | "vk" => q.virtual_key = nonempty(),
            "provider" => q.provider = nonempty(),
            "model" => q.model = nonempty(),
            "request_id" => q.request_id = nonempty(),
            "status" => {
                q.status = Some(status_filter(&v).ok_or_else(|| {
                    format!("`status` must be a code (429), a class (5xx) or `error`, got `{v}`")
                })?);
            }
            "limit" | "n" => {
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("`limit` must be a number, got `{v}`"))?;
                q.limit = n.clamp(1, MAX_LIMIT);
            }
            _ => {
                return Err(format!(
                    "unknown parameter `{k}` (filters: since, until, virtual_key, provider, model, status, request_id, limit)"
                ))
            }
        }
    }
    Ok(q)
}

/// A point in time: RFC 3339, or a unix time in seconds or milliseconds, with a fraction or not
/// (`1714564800`, `1714564800.25` and `1714564800000` are the same second: values below 10^11
/// are seconds, which reach the year 5138, and milliseconds start in 1973).
fn parse_instant(v: &str) -> Option<u64> {
    let t = v.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let x: f64 = t.parse().ok()?;
        let ms = if x < 1e11 { x * 1000.0 } else { x };
        return (ms.is_finite() && ms >= 0.0).then_some(ms as u64);
    }
    parse_time(t)
}

/// Parses `GET /admin/stats` parameters into `(since_ms, until_ms)`.
pub(crate) fn stats_window(query: &str) -> Result<(u64, u64), String> {
    let mut window = DEFAULT_WINDOW;
    for (k, v) in pairs(query) {
        match k.as_str() {
            "window" => {
                window = parse_window(&v).ok_or_else(|| {
                    format!("`window` must look like 90s, 30m, 1h or 7d, got `{v}`")
                })?;
            }
            "window_secs" => {
                window = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("`window_secs` must be a number, got `{v}`"))?,
                );
            }
            _ => return Err(format!("unknown parameter `{k}`")),
        }
    }
    let until = now_ms();
    let since = until.saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
    Ok((since, until))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_queries_parse_and_refuse_nonsense() {
        let q = log_query("since=2024-05-01T12:00:00Z&until=1714564900000&virtual_key=team%20a&provider=oai&status=5xx&limit=5000").unwrap();
        assert_eq!(q.since_ms, Some(1_714_564_800_000));
        assert_eq!(q.until_ms, Some(1_714_564_900_000));
        assert_eq!(q.virtual_key.as_deref(), Some("team a"));
        assert_eq!(q.provider.as_deref(), Some("oai"));
        assert_eq!(q.status, Some(StatusFilter::Class(5)));
        assert_eq!(q.limit, MAX_LIMIT, "limit is capped");
        assert_eq!(log_query("").unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(
            log_query("since=2024-05-01T14:00:00+02:00")
                .unwrap()
                .since_ms,
            Some(1_714_564_800_000),
            "an unencoded + offset survives"
        );
        assert_eq!(
            log_query("status=429").unwrap().status,
            Some(StatusFilter::Exact(429))
        );
        assert_eq!(
            log_query("status=error").unwrap().status,
            Some(StatusFilter::Error)
        );
        // Unix seconds (whole or with a fraction, as Python's time.time() gives them) and the
        // usual other names of the filters.
        let q = log_query("from=1714564800.5&to=1714564900&key=k&n=3").unwrap();
        assert_eq!(q.since_ms, Some(1_714_564_800_500));
        assert_eq!(q.until_ms, Some(1_714_564_900_000));
        assert_eq!(q.virtual_key.as_deref(), Some("k"));
        assert_eq!(q.limit, 3);
        assert_eq!(log_query("start=0").unwrap().since_ms, Some(0));
        for bad in [
            "since=yesterday",
            "status=abc",
            "limit=x",
            "colour=red",
            "since=1.2.3",
        ] {
            assert!(log_query(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn stats_windows() {
        let (s, u) = stats_window("window=30m").unwrap();
        assert_eq!(u - s, 1_800_000);
        let (s, u) = stats_window("window_secs=60").unwrap();
        assert_eq!(u - s, 60_000);
        let (s, u) = stats_window("").unwrap();
        assert_eq!(u - s, 3_600_000);
        assert!(stats_window("window=soon").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(decode("a%20b%2Bc+d%zz%4"), "a b+c+d%zz%4");
    }
}
