//! The embedded SQLite database: API-made virtual keys (hashed secrets only) and settled spend.
//!
//! One dedicated thread owns the connection; the async side sends it operations over a channel and,
//! when it needs an answer, awaits a oneshot reply, so no SQLite call ever runs on the async
//! runtime. The thread drains whatever is queued and commits it in one transaction (group commit),
//! in WAL mode with `synchronous=FULL`: spend handed to it is on disk once that transaction commits,
//! which is microseconds to milliseconds after `Permit::settle`.

use std::path::Path;
use std::sync::mpsc;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::config::{Kind, LimitsSpec};
use crate::error::GovernanceError;

/// A virtual key made through the admin API, as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredKey {
    pub spec: LimitsSpec,
    pub digest: [u8; 32],
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// Spend to add to one (level, period) row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpendRow {
    pub kind: Kind,
    pub name: String,
    pub period: &'static str,
    pub period_start: i64,
    pub period_end: Option<i64>,
    pub usd: f64,
    /// Requests settled and their tokens, counted with the spend.
    pub requests: u64,
    pub tokens: u64,
}

/// The rate-limit windows of one level (rpm, tpm, the current minute's counts), saved so that
/// a restart within the minute does not hand out a fresh burst.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WindowRow {
    pub kind: Kind,
    pub name: String,
    /// The rpm limiter's theoretical arrival time, unix nanoseconds (0: none).
    pub rpm_tat_ns: u64,
    /// The tpm bucket's level and when it was last brought up to date (unix ms), if any.
    pub tpm: Option<(f64, i64)>,
    /// The UTC minute (unix ms / 60,000) the counts below belong to.
    pub minute: i64,
    pub minute_requests: u64,
    pub minute_tokens: u64,
    /// When this was saved (unix ms).
    pub saved_ms: i64,
}

/// What the database held at start.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// Rate-limit windows saved less than a minute before the start.
    pub windows: Vec<WindowRow>,
    pub keys: Vec<StoredKey>,
    /// Spend of periods that have not ended.
    pub spend: Vec<SpendRow>,
    /// Whether a key was ever made through the admin API in this database.
    pub api_keys_made: bool,
}

type Reply = oneshot::Sender<Result<(), String>>;

pub(crate) enum DbOp {
    AddSpend(Vec<SpendRow>),
    SaveWindows(Vec<WindowRow>),
    InsertKey(StoredKey, Reply),
    UpdateKey(StoredKey, Reply),
    DeleteKey(String, Reply),
    Flush(Reply),
}

/// Sends operations to the database thread.
#[derive(Clone)]
pub(crate) struct DbHandle {
    tx: mpsc::Sender<DbOp>,
}

impl DbHandle {
    /// Queues spend; never blocks.
    pub fn add_spend(&self, rows: Vec<SpendRow>) {
        if rows.is_empty() {
            return;
        }
        if self.tx.send(DbOp::AddSpend(rows)).is_err() {
            tracing::error!(
                "governance database thread has stopped: settled spend was not persisted"
            );
        }
    }

    /// Queues rate-limit windows to save; never blocks.
    pub fn save_windows(&self, rows: Vec<WindowRow>) {
        if !rows.is_empty() {
            let _ = self.tx.send(DbOp::SaveWindows(rows));
        }
    }

    async fn call(&self, make: impl FnOnce(Reply) -> DbOp) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| GovernanceError::WriterGone.to_string())?;
        rx.await
            .map_err(|_| GovernanceError::WriterGone.to_string())?
    }

    pub async fn insert_key(&self, key: StoredKey) -> Result<(), String> {
        self.call(|r| DbOp::InsertKey(key, r)).await
    }

    pub async fn update_key(&self, key: StoredKey) -> Result<(), String> {
        self.call(|r| DbOp::UpdateKey(key, r)).await
    }

    pub async fn delete_key(&self, name: String) -> Result<(), String> {
        self.call(|r| DbOp::DeleteKey(name, r)).await
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) -> Result<(), String> {
        self.call(DbOp::Flush).await
    }
}

/// Opens (creating if needed) the database and loads it. Blocking: call it off the runtime.
pub(crate) fn open(path: &Path, now_ms: i64) -> Result<(Connection, Loaded), GovernanceError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS virtual_keys (
             name TEXT PRIMARY KEY,
             secret_sha256 TEXT NOT NULL UNIQUE,
             spec TEXT NOT NULL,
             created_ms INTEGER NOT NULL,
             updated_ms INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS spend (
             kind TEXT NOT NULL,
             name TEXT NOT NULL,
             period TEXT NOT NULL,
             period_start INTEGER NOT NULL,
             period_end INTEGER,
             spend_usd REAL NOT NULL,
             requests INTEGER NOT NULL DEFAULT 0,
             tokens INTEGER NOT NULL DEFAULT 0,
             PRIMARY KEY (kind, name, period, period_start)
         );
         CREATE TABLE IF NOT EXISTS windows (
             kind TEXT NOT NULL,
             name TEXT NOT NULL,
             rpm_tat_ns INTEGER NOT NULL,
             tpm_level REAL,
             tpm_ms INTEGER,
             minute INTEGER NOT NULL,
             minute_requests INTEGER NOT NULL,
             minute_tokens INTEGER NOT NULL,
             saved_ms INTEGER NOT NULL,
             PRIMARY KEY (kind, name)
         );
         CREATE TABLE IF NOT EXISTS meta (
             name TEXT PRIMARY KEY,
             value TEXT NOT NULL
         );
         PRAGMA user_version = 1;",
    )?;
    // Databases made before the period counts: add their columns.
    let has_counts = conn
        .prepare("SELECT 1 FROM pragma_table_info('spend') WHERE name = 'requests'")?
        .exists([])?;
    if !has_counts {
        conn.execute_batch(
            "ALTER TABLE spend ADD COLUMN requests INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE spend ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    let mut loaded = Loaded {
        api_keys_made: conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'api_keys_made'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .is_some(),
        ..Loaded::default()
    };
    {
        let mut stmt = conn.prepare(
            "SELECT spec, secret_sha256, created_ms, updated_ms FROM virtual_keys ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (spec, digest, created_ms, updated_ms) = row?;
            let spec: LimitsSpec = serde_json::from_str(&spec)?;
            let Some(digest) = hex::decode(&digest)
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
            else {
                tracing::error!(key = %spec.name, "stored virtual key has a malformed digest; skipped");
                continue;
            };
            loaded.keys.push(StoredKey {
                spec,
                digest,
                created_ms,
                updated_ms,
            });
        }
    }
    {
        let mut stmt = conn.prepare(
            "SELECT kind, name, period, period_start, period_end, spend_usd, requests, tokens
             FROM spend WHERE period_end IS NULL OR period_end > ?1",
        )?;
        let rows = stmt.query_map([now_ms], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, f64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        for row in rows {
            let (kind, name, period, period_start, period_end, usd, requests, tokens) = row?;
            let kind = match kind.as_str() {
                "key" => Kind::Key,
                "team" => Kind::Team,
                "customer" => Kind::Customer,
                _ => continue,
            };
            let period = match crate::period::Period::parse(Some(&period)) {
                Ok(p) => p.label(),
                Err(_) if period == "lifetime" => "lifetime",
                Err(_) => continue,
            };
            loaded.spend.push(SpendRow {
                kind,
                name,
                period,
                period_start,
                period_end,
                usd,
                requests: u64::try_from(requests).unwrap_or(0),
                tokens: u64::try_from(tokens).unwrap_or(0),
            });
        }
    }
    {
        let mut stmt = conn.prepare(
            "SELECT kind, name, rpm_tat_ns, tpm_level, tpm_ms, minute, minute_requests,
                    minute_tokens, saved_ms
             FROM windows WHERE saved_ms > ?1",
        )?;
        let rows = stmt.query_map([now_ms - 60_000], |r| {
            Ok((
                r.get::<_, String>(0)?,
                WindowRow {
                    kind: Kind::Key,
                    name: r.get(1)?,
                    rpm_tat_ns: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    tpm: match (r.get::<_, Option<f64>>(3)?, r.get::<_, Option<i64>>(4)?) {
                        (Some(level), Some(ms)) => Some((level, ms)),
                        _ => None,
                    },
                    minute: r.get(5)?,
                    minute_requests: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                    minute_tokens: u64::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
                    saved_ms: r.get(8)?,
                },
            ))
        })?;
        for row in rows {
            let (kind, mut w) = row?;
            w.kind = match kind.as_str() {
                "key" => Kind::Key,
                "team" => Kind::Team,
                "customer" => Kind::Customer,
                _ => continue,
            };
            loaded.windows.push(w);
        }
    }
    Ok((conn, loaded))
}

fn save_windows(conn: &mut Connection, rows: &[WindowRow]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO windows (kind, name, rpm_tat_ns, tpm_level, tpm_ms, minute,
                 minute_requests, minute_tokens, saved_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for w in rows {
            stmt.execute(params![
                w.kind.as_str(),
                w.name,
                i64::try_from(w.rpm_tat_ns).unwrap_or(i64::MAX),
                w.tpm.map(|(level, _)| level),
                w.tpm.map(|(_, ms)| ms),
                w.minute,
                i64::try_from(w.minute_requests).unwrap_or(i64::MAX),
                i64::try_from(w.minute_tokens).unwrap_or(i64::MAX),
                w.saved_ms,
            ])?;
        }
    }
    tx.commit()
}

/// Starts the database thread.
pub(crate) fn spawn(conn: Connection) -> Result<DbHandle, GovernanceError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("governance-db".into())
        .spawn(move || run(conn, rx))
        .map_err(|source| GovernanceError::DataDir {
            path: "governance-db thread".into(),
            source,
        })?;
    Ok(DbHandle { tx })
}

fn run(mut conn: Connection, rx: mpsc::Receiver<DbOp>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut spend: Vec<SpendRow> = Vec::new();
        for op in batch {
            match op {
                DbOp::AddSpend(rows) => spend.extend(rows),
                other => {
                    commit_spend(&mut conn, &mut spend);
                    match other {
                        DbOp::InsertKey(k, reply) => {
                            let _ = reply.send(insert_key(&conn, &k));
                        }
                        DbOp::UpdateKey(k, reply) => {
                            let _ = reply.send(update_key(&conn, &k));
                        }
                        DbOp::DeleteKey(name, reply) => {
                            let r = conn
                                .execute("DELETE FROM virtual_keys WHERE name = ?1", [&name])
                                .map(|_| ())
                                .map_err(|e| e.to_string());
                            let _ = reply.send(r);
                        }
                        DbOp::SaveWindows(rows) => {
                            if let Err(e) = save_windows(&mut conn, &rows) {
                                tracing::warn!(error = %e, "could not save rate-limit windows");
                            }
                        }
                        DbOp::Flush(reply) => {
                            let _ = reply.send(Ok(()));
                        }
                        DbOp::AddSpend(_) => {}
                    }
                }
            }
        }
        commit_spend(&mut conn, &mut spend);
    }
}

fn commit_spend(conn: &mut Connection, rows: &mut Vec<SpendRow>) {
    if rows.is_empty() {
        return;
    }
    let result = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO spend (kind, name, period, period_start, period_end, spend_usd, requests, tokens)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (kind, name, period, period_start) DO UPDATE SET
                     spend_usd = spend_usd + excluded.spend_usd,
                     requests = requests + excluded.requests,
                     tokens = tokens + excluded.tokens",
            )?;
            for r in rows.iter() {
                stmt.execute(params![
                    r.kind.as_str(),
                    r.name,
                    r.period,
                    r.period_start,
                    r.period_end,
                    r.usd,
                    i64::try_from(r.requests).unwrap_or(i64::MAX),
                    i64::try_from(r.tokens).unwrap_or(i64::MAX),
                ])?;
            }
        }
        tx.commit()
    })();
    match result {
        Ok(()) => rows.clear(),
        Err(e) => {
            // Keep the rows: they are retried with the next batch.
            tracing::error!(error = %e, pending = rows.len(), "could not persist settled spend; will retry");
        }
    }
}

fn spec_json(k: &StoredKey) -> Result<String, String> {
    let mut spec = k.spec.clone();
    spec.secret = None;
    serde_json::to_string(&spec).map_err(|e| e.to_string())
}

fn insert_key(conn: &Connection, k: &StoredKey) -> Result<(), String> {
    let exists: Option<String> = conn
        .query_row(
            "SELECT name FROM virtual_keys WHERE name = ?1",
            [&k.spec.name],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| e.to_string())?;
    if exists.is_some() {
        return Err(format!("virtual key {:?} already exists", k.spec.name));
    }
    conn.execute(
        "INSERT OR REPLACE INTO meta (name, value) VALUES ('api_keys_made', '1')",
        [],
    )
    .map_err(|e| e.to_string())?;
    conn.execute(
        "INSERT INTO virtual_keys (name, secret_sha256, spec, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![k.spec.name, hex::encode(k.digest), spec_json(k)?, k.created_ms, k.updated_ms],
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn update_key(conn: &Connection, k: &StoredKey) -> Result<(), String> {
    let n = conn
        .execute(
            "UPDATE virtual_keys SET secret_sha256 = ?2, spec = ?3, updated_ms = ?4 WHERE name = ?1",
            params![k.spec.name, hex::encode(k.digest), spec_json(k)?, k.updated_ms],
        )
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err(format!("virtual key {:?} does not exist", k.spec.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database made before the period counts opens: its spend loads, with counts from zero,
    /// and a settlement adds to both.
    #[test]
    fn a_database_without_period_counts_is_brought_up_to_date() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("governance.sqlite3");
        {
            let conn = Connection::open(&path).expect("db");
            conn.execute_batch(
                "CREATE TABLE spend (
                     kind TEXT NOT NULL, name TEXT NOT NULL, period TEXT NOT NULL,
                     period_start INTEGER NOT NULL, period_end INTEGER, spend_usd REAL NOT NULL,
                     PRIMARY KEY (kind, name, period, period_start));
                 INSERT INTO spend VALUES ('key', 'k', 'lifetime', 0, NULL, 1.5);",
            )
            .expect("old schema");
        }
        let (mut conn, loaded) = open(&path, 1_000).expect("opens");
        assert_eq!(loaded.spend.len(), 1);
        assert_eq!(
            (
                loaded.spend[0].usd,
                loaded.spend[0].requests,
                loaded.spend[0].tokens
            ),
            (1.5, 0, 0)
        );
        let mut rows = vec![SpendRow {
            kind: Kind::Key,
            name: "k".into(),
            period: "lifetime",
            period_start: 0,
            period_end: None,
            usd: 0.5,
            requests: 1,
            tokens: 40,
        }];
        commit_spend(&mut conn, &mut rows);
        assert!(rows.is_empty(), "committed");
        drop(conn);
        let (_, loaded) = open(&path, 1_000).expect("opens again");
        assert_eq!(
            (
                loaded.spend[0].usd,
                loaded.spend[0].requests,
                loaded.spend[0].tokens
            ),
            (2.0, 1, 40)
        );
    }
}
