//! The embedded request-log store: SQLite (WAL) in `data_dir/logs.db`.
//!
//! `requests` holds one row per client request: the columns the admin API filters on plus the whole
//! [`LogEntry`] as JSON (attempts nested). `attempts` holds one row per upstream attempt, with the
//! tokens and cost of the request on its serving attempt, for `/admin/stats`. Writes come in
//! batches, one transaction each, from the log writer thread; reads use their own connection.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::record::{LogEntry, Tokens};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    virtual_key TEXT,
    endpoint TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    route TEXT,
    provider TEXT,
    model TEXT,
    stream INTEGER NOT NULL,
    status INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    trace_id TEXT,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts_ms);
CREATE INDEX IF NOT EXISTS requests_request_id ON requests (request_id);
CREATE TABLE IF NOT EXISTS attempts (
    request INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    provider TEXT NOT NULL,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER,
    latency_ms REAL NOT NULL,
    is_retry INTEGER NOT NULL,
    fallback_from TEXT,
    serving INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    PRIMARY KEY (request, seq)
);
CREATE INDEX IF NOT EXISTS attempts_ts ON attempts (ts_ms);
CREATE INDEX IF NOT EXISTS attempts_provider ON attempts (provider, request);
";

/// Opens (creating) the store for writing: WAL, normal sync, schema.
pub(crate) fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Opens a second connection for the admin API's reads.
pub(crate) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Writes a batch in one transaction.
pub(crate) fn insert_batch(conn: &mut Connection, entries: &[LogEntry]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut req = tx.prepare_cached(
            "INSERT INTO requests (request_id, ts_ms, virtual_key, endpoint, requested_model, route,
                provider, model, stream, status, duration_ms, prompt_tokens, completion_tokens,
                cached_tokens, cost_usd, trace_id, entry)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )?;
        let mut att = tx.prepare_cached(
            "INSERT INTO attempts (request, seq, ts_ms, provider, key, model, outcome, status,
                latency_ms, is_retry, fallback_from, serving, prompt_tokens, completion_tokens,
                cached_tokens, cost_usd)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?;
        for e in entries {
            let json = serde_json::to_string(e)
                .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?;
            req.execute(params![
                e.id,
                i64_of(e.timestamp_ms),
                e.virtual_key,
                e.endpoint,
                e.requested_model,
                e.route,
                e.provider,
                e.model,
                e.stream,
                e.status,
                e.duration_ms,
                i64_of(e.tokens.prompt),
                i64_of(e.tokens.completion),
                i64_of(e.tokens.cached),
                e.cost_usd,
                e.trace_id,
                json,
            ])?;
            let rowid = tx.last_insert_rowid();
            let serving = e.serving_attempt();
            for (i, a) in e.attempts.iter().enumerate() {
                let is_serving = serving == Some(i);
                let (t, cost) = if is_serving {
                    (e.tokens, e.cost_usd)
                } else {
                    (Tokens::default(), 0.0)
                };
                att.execute(params![
                    rowid,
                    i as i64,
                    i64_of(e.timestamp_ms),
                    a.provider,
                    a.key,
                    a.model,
                    a.outcome,
                    a.status,
                    a.latency_ms,
                    a.is_retry,
                    a.fallback_from,
                    is_serving,
                    i64_of(t.prompt),
                    i64_of(t.completion),
                    i64_of(t.cached),
                    cost,
                ])?;
            }
        }
    }
    tx.commit()
}

/// Deletes rows older than `max_age_ms` and beyond the newest `max_rows`; returns rows deleted.
pub(crate) fn apply_retention(
    conn: &mut Connection,
    now_ms: u64,
    max_age_ms: Option<u64>,
    max_rows: Option<u64>,
) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let mut deleted = 0;
    if let Some(age) = max_age_ms {
        let cutoff = i64_of(now_ms.saturating_sub(age));
        deleted += tx.execute("DELETE FROM requests WHERE ts_ms < ?1", [cutoff])?;
        tx.execute("DELETE FROM attempts WHERE ts_ms < ?1", [cutoff])?;
    }
    if let Some(rows) = max_rows {
        let keep_from: Option<i64> = if rows == 0 {
            Some(i64::MAX)
        } else {
            tx.query_row(
                "SELECT id FROM requests ORDER BY id DESC LIMIT 1 OFFSET ?1",
                [i64_of(rows - 1)],
                |r| r.get(0),
            )
            .optional()?
        };
        if let Some(id) = keep_from {
            deleted += tx.execute("DELETE FROM requests WHERE id < ?1", [id])?;
            tx.execute("DELETE FROM attempts WHERE request < ?1", [id])?;
        }
    }
    tx.commit()?;
    Ok(deleted)
}

/// How `status` is filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this status.
    Exact(u16),
    /// `2xx`, `4xx`, `5xx`...: the hundreds digit.
    Class(u16),
    /// Any status of 400 or more.
    Error,
}

/// A `GET /admin/logs` query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogQuery {
    /// Only requests that arrived at or after (unix ms).
    pub since_ms: Option<u64>,
    /// Only requests that arrived at or before (unix ms).
    pub until_ms: Option<u64>,
    /// Only this virtual key.
    pub virtual_key: Option<String>,
    /// Only requests that tried or were served by this provider.
    pub provider: Option<String>,
    /// Only this model (requested or upstream).
    pub model: Option<String>,
    /// Only this status.
    pub status: Option<StatusFilter>,
    /// Only this request id.
    pub request_id: Option<String>,
    /// At most this many (newest first).
    pub limit: usize,
}

/// Newest first, filtered.
pub(crate) fn query_logs(conn: &Connection, q: &LogQuery) -> rusqlite::Result<Vec<LogEntry>> {
    let mut sql = String::from("SELECT entry FROM requests WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(s) = q.since_ms {
        arg(&mut sql, " AND ts_ms >= ?", Value::Integer(i64_of(s)));
    }
    if let Some(u) = q.until_ms {
        arg(&mut sql, " AND ts_ms <= ?", Value::Integer(i64_of(u)));
    }
    if let Some(vk) = &q.virtual_key {
        arg(&mut sql, " AND virtual_key = ?", Value::Text(vk.clone()));
    }
    if let Some(p) = &q.provider {
        arg(
            &mut sql,
            " AND (provider = ? OR EXISTS (SELECT 1 FROM attempts a WHERE a.request = requests.id AND a.provider = ?))",
            Value::Text(p.clone()),
        );
    }
    if let Some(m) = &q.model {
        arg(
            &mut sql,
            " AND (model = ? OR requested_model = ?)",
            Value::Text(m.clone()),
        );
    }
    if let Some(id) = &q.request_id {
        arg(&mut sql, " AND request_id = ?", Value::Text(id.clone()));
    }
    match q.status {
        Some(StatusFilter::Exact(s)) => arg(&mut sql, " AND status = ?", Value::Integer(s.into())),
        Some(StatusFilter::Class(c)) => {
            arg(&mut sql, " AND status / 100 = ?", Value::Integer(c.into()))
        }
        Some(StatusFilter::Error) => sql.push_str(" AND status >= 400"),
        None => {}
    }
    sql.push_str(" ORDER BY ts_ms DESC, id DESC LIMIT ");
    sql.push_str(&q.limit.to_string());
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for json in rows {
        match serde_json::from_str::<LogEntry>(&json?) {
            Ok(e) => out.push(e),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable request log row"),
        }
    }
    Ok(out)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
}

/// Upstream figures of one provider or key over the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpstreamStats {
    /// Attempts sent.
    pub requests: u64,
    /// Attempts that failed (any outcome but `ok`).
    pub errors: u64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Attempts answered 429 (`rate_limited`).
    pub rate_limited: u64,
    /// `rate_limited / requests`.
    pub rate_limited_rate: f64,
    /// Attempt latency (time to answer, or to first chunk for streams).
    pub latency: Latency,
    /// Attempts that arrived here by failing over from another provider.
    pub fallbacks_in: u64,
    /// Tokens of the requests served here.
    pub tokens: Tokens,
    /// Cost of the requests served here, USD.
    pub cost_usd: f64,
}

/// One key's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KeyStats {
    /// Key name.
    pub key: String,
    /// Its figures.
    #[serde(flatten)]
    pub stats: UpstreamStats,
}

/// One provider's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProviderStats {
    /// Provider name.
    pub provider: String,
    /// Its figures.
    #[serde(flatten)]
    pub stats: UpstreamStats,
    /// Attempts that left this provider for another.
    pub fallbacks_out: u64,
    /// Per key.
    pub keys: Vec<KeyStats>,
}

/// Client-side figures over the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestStats {
    /// Client requests.
    pub requests: u64,
    /// Answered 400 or more.
    pub errors: u64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Requests that failed over to another provider at least once.
    pub with_fallback: u64,
    /// End-to-end duration.
    pub latency: Latency,
    /// Tokens.
    pub tokens: Tokens,
    /// Cost, USD.
    pub cost_usd: f64,
}

/// `GET /admin/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Window start (unix ms).
    pub since_ms: u64,
    /// Window end (unix ms).
    pub until_ms: u64,
    /// What clients saw.
    pub requests: RequestStats,
    /// Per provider, with its keys.
    pub providers: Vec<ProviderStats>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn latency(mut v: Vec<f64>) -> Latency {
    v.sort_by(f64::total_cmp);
    Latency {
        p50_ms: percentile(&v, 0.50),
        p99_ms: percentile(&v, 0.99),
    }
}

#[derive(Default)]
struct Acc {
    stats: UpstreamStats,
    latencies: Vec<f64>,
}

impl Acc {
    fn add(&mut self, row: &AttemptRow) {
        let s = &mut self.stats;
        s.requests += 1;
        if row.outcome != "ok" {
            s.errors += 1;
        }
        if row.outcome == "rate_limited" {
            s.rate_limited += 1;
        }
        if row.fallback {
            s.fallbacks_in += 1;
        }
        s.tokens.prompt += row.tokens.prompt;
        s.tokens.completion += row.tokens.completion;
        s.tokens.cached += row.tokens.cached;
        s.cost_usd += row.cost;
        self.latencies.push(row.latency_ms);
    }

    fn finish(self) -> UpstreamStats {
        let mut s = self.stats;
        if s.requests > 0 {
            s.error_rate = s.errors as f64 / s.requests as f64;
            s.rate_limited_rate = s.rate_limited as f64 / s.requests as f64;
        }
        s.latency = latency(self.latencies);
        s
    }
}

struct AttemptRow {
    provider: String,
    key: String,
    outcome: String,
    latency_ms: f64,
    fallback_from: Option<String>,
    fallback: bool,
    tokens: Tokens,
    cost: f64,
}

fn u64_col(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(u64::try_from(r.get::<_, i64>(i)?).unwrap_or(0))
}

/// Aggregates the window `[since_ms, until_ms]`.
pub(crate) fn stats(conn: &Connection, since_ms: u64, until_ms: u64) -> rusqlite::Result<Stats> {
    let (since, until) = (i64_of(since_ms), i64_of(until_ms));
    let mut providers: BTreeMap<String, (Acc, BTreeMap<String, Acc>)> = BTreeMap::new();
    let mut fallbacks_out: BTreeMap<String, u64> = BTreeMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT provider, key, outcome, latency_ms, fallback_from, prompt_tokens,
                    completion_tokens, cached_tokens, cost_usd
             FROM attempts WHERE ts_ms >= ?1 AND ts_ms <= ?2",
        )?;
        let rows = stmt.query_map([since, until], |r| {
            let fallback_from: Option<String> = r.get(4)?;
            Ok(AttemptRow {
                provider: r.get(0)?,
                key: r.get(1)?,
                outcome: r.get(2)?,
                latency_ms: r.get(3)?,
                fallback: fallback_from.is_some(),
                fallback_from,
                tokens: Tokens {
                    prompt: u64_col(r, 5)?,
                    completion: u64_col(r, 6)?,
                    cached: u64_col(r, 7)?,
                },
                cost: r.get(8)?,
            })
        })?;
        for row in rows {
            let row = row?;
            if let Some(from) = &row.fallback_from {
                *fallbacks_out.entry(from.clone()).or_default() += 1;
            }
            let p = providers.entry(row.provider.clone()).or_default();
            p.0.add(&row);
            p.1.entry(row.key.clone()).or_default().add(&row);
        }
    }
    let providers = providers
        .into_iter()
        .map(|(provider, (acc, keys))| ProviderStats {
            fallbacks_out: fallbacks_out.get(&provider).copied().unwrap_or(0),
            provider,
            stats: acc.finish(),
            keys: keys
                .into_iter()
                .map(|(key, acc)| KeyStats {
                    key,
                    stats: acc.finish(),
                })
                .collect(),
        })
        .collect();

    let mut requests = RequestStats::default();
    let mut durations = Vec::new();
    {
        let mut stmt = conn.prepare(
            "SELECT status, duration_ms, prompt_tokens, completion_tokens, cached_tokens, cost_usd,
                    EXISTS (SELECT 1 FROM attempts a WHERE a.request = requests.id
                            AND a.fallback_from IS NOT NULL)
             FROM requests WHERE ts_ms >= ?1 AND ts_ms <= ?2",
        )?;
        let mut rows = stmt.query([since, until])?;
        while let Some(r) = rows.next()? {
            requests.requests += 1;
            if r.get::<_, i64>(0)? >= 400 {
                requests.errors += 1;
            }
            durations.push(r.get::<_, f64>(1)?);
            requests.tokens.prompt += u64_col(r, 2)?;
            requests.tokens.completion += u64_col(r, 3)?;
            requests.tokens.cached += u64_col(r, 4)?;
            requests.cost_usd += r.get::<_, f64>(5)?;
            if r.get::<_, bool>(6)? {
                requests.with_fallback += 1;
            }
        }
    }
    if requests.requests > 0 {
        requests.error_rate = requests.errors as f64 / requests.requests as f64;
    }
    requests.latency = latency(durations);
    Ok(Stats {
        since_ms,
        until_ms,
        requests,
        providers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
