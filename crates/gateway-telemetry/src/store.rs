//! The embedded request-log store: SQLite (WAL) in `data_dir/logs.db`.
//!
//! `requests` holds one row per client request and `attempts` one row per upstream attempt (with
//! the tokens and cost of the request on its serving attempt, for `/admin/stats`); together their
//! columns hold the whole [`LogEntry`]. Writes come in batches, one transaction each, from the log
//! writer thread; reads use their own connection.
//!
//! Stores written before the columns held everything kept the entry as JSON in `requests.entry`;
//! such rows are still read from it (new rows leave it empty), and [`open`] adds the columns
//! they lack.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::record::{AttemptEntry, Content, LogEntry, Tokens};
use crate::time::format_rfc3339_ms;

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
    entry TEXT NOT NULL DEFAULT '',
    error TEXT,
    ttft_ms REAL,
    span_id TEXT,
    content_request TEXT,
    content_response TEXT,
    cache TEXT
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
    provider_kind TEXT NOT NULL DEFAULT '',
    error TEXT,
    ttft_ms REAL,
    started_at_ms INTEGER NOT NULL DEFAULT 0,
    span_id TEXT,
    PRIMARY KEY (request, seq)
);
CREATE INDEX IF NOT EXISTS attempts_ts ON attempts (ts_ms);
DROP INDEX IF EXISTS attempts_provider;
";

/// Columns added since the first schema: `(table, column, definition)`.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("requests", "error", "TEXT"),
    ("requests", "ttft_ms", "REAL"),
    ("requests", "span_id", "TEXT"),
    ("requests", "content_request", "TEXT"),
    ("requests", "content_response", "TEXT"),
    ("requests", "cache", "TEXT"),
    ("attempts", "provider_kind", "TEXT NOT NULL DEFAULT ''"),
    ("attempts", "error", "TEXT"),
    ("attempts", "ttft_ms", "REAL"),
    ("attempts", "started_at_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("attempts", "span_id", "TEXT"),
];

/// Adds the columns an older store lacks.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, def) in ADDED_COLUMNS {
        let (columns, exists): (i64, bool) = conn.query_row(
            &format!(
                "SELECT COUNT(*), COALESCE(SUM(name = ?1), 0) > 0 FROM pragma_table_info('{table}')"
            ),
            [column],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        // No such table yet: the schema creates it whole.
        if columns > 0 && !exists {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {def}"))?;
        }
    }
    Ok(())
}

/// Opens (creating) the store for writing: WAL, normal sync, schema.
pub(crate) fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // A page cache of 512 KiB instead of SQLite's 2 MiB: the writer appends, and what it reads
    // back (index pages) the OS page cache keeps anyway. 1-2 MB less resident memory for the
    // gateway, no measurable CPU.
    conn.pragma_update(None, "cache_size", -512)?;
    // An older store: add the new columns before the schema's statements (they are all
    // `IF NOT EXISTS` or `IF EXISTS`, so they leave existing tables alone).
    migrate(&conn)?;
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
                cached_tokens, cost_usd, trace_id, error, ttft_ms, span_id, content_request,
                content_response, cache, entry)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20, ?21, ?22, '')",
        )?;
        let mut att = tx.prepare_cached(
            "INSERT INTO attempts (request, seq, ts_ms, provider, key, model, outcome, status,
                latency_ms, is_retry, fallback_from, serving, prompt_tokens, completion_tokens,
                cached_tokens, cost_usd, provider_kind, error, ttft_ms, started_at_ms, span_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20, ?21)",
        )?;
        for e in entries {
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
                e.error,
                e.ttft_ms,
                e.span_id,
                e.content.as_ref().map(|c| c.request.as_str()),
                e.content.as_ref().map(|c| c.response.as_str()),
                e.cache,
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
                    a.provider_kind,
                    a.error,
                    a.ttft_ms,
                    i64_of(a.started_at_ms),
                    a.span_id,
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
    let mut sql = String::from(
        "SELECT id, entry, request_id, ts_ms, virtual_key, endpoint, requested_model, route,
            provider, model, stream, status, error, duration_ms, ttft_ms, prompt_tokens,
            completion_tokens, cached_tokens, cost_usd, trace_id, span_id, content_request,
            content_response, cache
         FROM requests WHERE 1 = 1",
    );
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
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    // (rowid, entry) in order; rows stored as columns get their attempts below.
    let mut out: Vec<(i64, LogEntry)> = Vec::new();
    while let Some(r) = rows.next()? {
        let rowid: i64 = r.get(0)?;
        let json: String = r.get(1)?;
        if !json.is_empty() {
            // A row from a store written before the columns held everything.
            match serde_json::from_str::<LogEntry>(&json) {
                Ok(e) => out.push((0, e)),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable request log row"),
            }
            continue;
        }
        let ts: u64 = u64_col(r, 3)?;
        let content_request: Option<String> = r.get(21)?;
        let content_response: Option<String> = r.get(22)?;
        out.push((
            rowid,
            LogEntry {
                id: r.get(2)?,
                timestamp_ms: ts,
                time: format_rfc3339_ms(ts),
                virtual_key: r.get(4)?,
                endpoint: r.get(5)?,
                requested_model: r.get(6)?,
                route: r.get(7)?,
                provider: r.get(8)?,
                model: r.get(9)?,
                stream: r.get(10)?,
                status: r.get(11)?,
                error: r.get(12)?,
                duration_ms: r.get(13)?,
                ttft_ms: r.get(14)?,
                tokens: Tokens {
                    prompt: u64_col(r, 15)?,
                    completion: u64_col(r, 16)?,
                    cached: u64_col(r, 17)?,
                },
                cost_usd: r.get(18)?,
                trace_id: r.get(19)?,
                span_id: r.get(20)?,
                attempts: Vec::new(),
                cache: r.get(23)?,
                content: match (content_request, content_response) {
                    (Some(request), Some(response)) => Some(Content { request, response }),
                    _ => None,
                },
            },
        ));
    }
    let mut att = conn.prepare_cached(
        "SELECT provider, provider_kind, key, model, outcome, status, error, latency_ms, ttft_ms,
                is_retry, fallback_from, started_at_ms, span_id
         FROM attempts WHERE request = ?1 ORDER BY seq",
    )?;
    for (rowid, e) in &mut out {
        if *rowid == 0 {
            continue;
        }
        let mut rows = att.query([*rowid])?;
        while let Some(r) = rows.next()? {
            e.attempts.push(AttemptEntry {
                provider: r.get(0)?,
                provider_kind: r.get(1)?,
                key: r.get(2)?,
                model: r.get(3)?,
                outcome: r.get(4)?,
                status: r.get(5)?,
                error: r.get(6)?,
                latency_ms: r.get(7)?,
                ttft_ms: r.get(8)?,
                is_retry: r.get(9)?,
                fallback_from: r.get(10)?,
                started_at_ms: u64_col(r, 11)?,
                span_id: r.get(12)?,
            });
        }
    }
    Ok(out.into_iter().map(|(_, e)| e).collect())
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

/// Latencies kept per aggregate for the percentiles of `/admin/stats`: every one up to this
/// many, then a uniform sample of this size (a window of an hour at thousands of requests a
/// second would otherwise hold tens of millions of them in memory).
const LATENCY_SAMPLES: usize = 10_000;

/// A uniform random sample of at most [`LATENCY_SAMPLES`] values (reservoir sampling): all of
/// them, exact percentiles, while there are fewer.
struct Reservoir {
    seen: u64,
    samples: Vec<f64>,
    rng: fastrand::Rng,
}

impl Default for Reservoir {
    fn default() -> Self {
        Reservoir {
            seen: 0,
            samples: Vec::new(),
            // Fixed seed: the same window gives the same answer.
            rng: fastrand::Rng::with_seed(0x5eed),
        }
    }
}

impl Reservoir {
    fn push(&mut self, v: f64) {
        self.seen += 1;
        if self.samples.len() < LATENCY_SAMPLES {
            self.samples.push(v);
        } else {
            let i = self.rng.u64(..self.seen);
            if let Some(slot) = usize::try_from(i)
                .ok()
                .and_then(|i| self.samples.get_mut(i))
            {
                *slot = v;
            }
        }
    }

    fn latency(mut self) -> Latency {
        self.samples.sort_by(f64::total_cmp);
        Latency {
            p50_ms: percentile(&self.samples, 0.50),
            p99_ms: percentile(&self.samples, 0.99),
        }
    }
}

#[derive(Default)]
struct Acc {
    stats: UpstreamStats,
    latencies: Reservoir,
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
        s.latency = self.latencies.latency();
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
    let mut durations = Reservoir::default();
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
    requests.latency = durations.latency();
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

    /// Percentiles are exact up to [`LATENCY_SAMPLES`] values; past it, memory stays bounded and
    /// the sample stays uniform (a shuffled 0..100,000 gives a median near 50,000, which a
    /// sample biased to the first or last values would not).
    #[test]
    fn latency_percentiles_exact_then_sampled() {
        let mut r = Reservoir::default();
        for v in (1..=200).rev() {
            r.push(f64::from(v));
        }
        let l = r.latency();
        assert_eq!((l.p50_ms, l.p99_ms), (Some(100.0), Some(198.0)));

        let mut values: Vec<u32> = (0..100_000).collect();
        fastrand::Rng::with_seed(1).shuffle(&mut values);
        let mut r = Reservoir::default();
        for v in values {
            r.push(f64::from(v));
        }
        assert_eq!(r.samples.len(), LATENCY_SAMPLES);
        let l = r.latency();
        let p50 = l.p50_ms.unwrap();
        let p99 = l.p99_ms.unwrap();
        assert!((47_000.0..53_000.0).contains(&p50), "{p50}");
        assert!((98_000.0..100_000.0).contains(&p99), "{p99}");
        assert_eq!(Reservoir::default().latency().p50_ms, None);
    }

    /// The first schema, whose rows kept the whole entry as JSON.
    const OLD_SCHEMA: &str = "
        CREATE TABLE requests (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, ts_ms INTEGER NOT NULL,
            virtual_key TEXT, endpoint TEXT NOT NULL, requested_model TEXT NOT NULL, route TEXT,
            provider TEXT, model TEXT, stream INTEGER NOT NULL, status INTEGER NOT NULL,
            duration_ms REAL NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL, cost_usd REAL NOT NULL, trace_id TEXT, entry TEXT NOT NULL);
        CREATE TABLE attempts (request INTEGER NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
            provider TEXT NOT NULL, key TEXT NOT NULL, model TEXT NOT NULL, outcome TEXT NOT NULL,
            status INTEGER, latency_ms REAL NOT NULL, is_retry INTEGER NOT NULL, fallback_from TEXT,
            serving INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL, cost_usd REAL NOT NULL, PRIMARY KEY (request, seq));
        CREATE INDEX attempts_provider ON attempts (provider, request);";

    fn entry(id: &str, ts: u64) -> LogEntry {
        LogEntry {
            id: id.to_owned(),
            timestamp_ms: ts,
            time: format_rfc3339_ms(ts),
            virtual_key: Some("team-a".to_owned()),
            endpoint: "chat".to_owned(),
            requested_model: "fast".to_owned(),
            route: Some("fast".to_owned()),
            provider: Some("oai".to_owned()),
            model: Some("gpt-4o-mini".to_owned()),
            stream: true,
            status: 200,
            error: None,
            duration_ms: 12.5,
            ttft_ms: Some(3.25),
            tokens: Tokens {
                prompt: 10,
                completion: 5,
                cached: 2,
            },
            cost_usd: 0.001,
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".to_owned()),
            span_id: Some("b7ad6b7169203331".to_owned()),
            cache: Some("miss".to_owned()),
            attempts: vec![
                AttemptEntry {
                    provider: "ant".to_owned(),
                    provider_kind: "anthropic".to_owned(),
                    key: "main".to_owned(),
                    model: "claude".to_owned(),
                    outcome: "rate_limited".to_owned(),
                    status: Some(429),
                    error: Some("rate limited".to_owned()),
                    latency_ms: 1.5,
                    ttft_ms: None,
                    is_retry: false,
                    fallback_from: None,
                    started_at_ms: ts,
                    span_id: Some("00f067aa0ba902b7".to_owned()),
                },
                AttemptEntry {
                    provider: "oai".to_owned(),
                    provider_kind: "openai".to_owned(),
                    key: "k1".to_owned(),
                    model: "gpt-4o-mini".to_owned(),
                    outcome: "ok".to_owned(),
                    status: Some(200),
                    error: None,
                    latency_ms: 9.0,
                    ttft_ms: Some(3.0),
                    is_retry: false,
                    fallback_from: Some("ant".to_owned()),
                    started_at_ms: ts + 2,
                    span_id: Some("00f067aa0ba902b8".to_owned()),
                },
            ],
            content: Some(Content {
                request: "{}".to_owned(),
                response: "hi".to_owned(),
            }),
        }
    }

    #[test]
    fn entries_round_trip_through_the_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = open(&dir.path().join("logs.db")).expect("open");
        let e = entry("req-1", 1_700_000_000_123);
        insert_batch(&mut conn, std::slice::from_ref(&e)).expect("insert");
        let mut plain = entry("req-2", 1_700_000_000_456);
        plain.content = None;
        plain.virtual_key = None;
        plain.attempts.truncate(1);
        plain.status = 429;
        plain.error = Some("no capacity".to_owned());
        insert_batch(&mut conn, std::slice::from_ref(&plain)).expect("insert");
        let got = newest_ten(&conn);
        assert_eq!(got, vec![plain, e]);
        // The provider filter still finds a request by any provider it tried.
        let q = LogQuery {
            provider: Some("ant".to_owned()),
            limit: 10,
            ..LogQuery::default()
        };
        assert_eq!(query_logs(&conn, &q).expect("query").len(), 2);
        let q = LogQuery {
            request_id: Some("req-1".to_owned()),
            limit: 10,
            ..LogQuery::default()
        };
        assert_eq!(query_logs(&conn, &q).expect("query")[0].attempts.len(), 2);
    }

    /// The ten newest logged requests.
    fn newest_ten(conn: &Connection) -> Vec<LogEntry> {
        let q = LogQuery {
            limit: 10,
            ..LogQuery::default()
        };
        query_logs(conn, &q).expect("query")
    }

    #[test]
    fn an_older_store_keeps_its_rows_and_takes_new_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs.db");
        let old = entry("old-1", 1_700_000_000_000);
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(OLD_SCHEMA).expect("old schema");
            c.execute(
                "INSERT INTO requests (request_id, ts_ms, endpoint, requested_model, stream, status,
                    duration_ms, prompt_tokens, completion_tokens, cached_tokens, cost_usd, entry)
                 VALUES ('old-1', 1700000000000, 'chat', 'fast', 1, 200, 12.5, 10, 5, 2, 0.001, ?1)",
                [serde_json::to_string(&old).expect("json")],
            )
            .expect("old row");
        }
        let mut conn = open(&path).expect("reopen migrates");
        let new = entry("new-1", 1_700_000_001_000);
        insert_batch(&mut conn, std::slice::from_ref(&new)).expect("insert into the old store");
        let got = newest_ten(&conn);
        assert_eq!(got, vec![new, old]);
        let gone: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'attempts_provider'",
                [],
                |r| r.get(0),
            )
            .expect("index count");
        assert_eq!(gone, 0, "the redundant index is dropped");
        // Opening again is a no-op.
        drop(conn);
        open(&path).expect("third open");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
