//! The shared store: counters in Redis, so limits hold across every gateway instance together.
//!
//! One Lua script admits a request atomically for all levels of the hierarchy (check everything,
//! then reserve everything), with the same semantics as the embedded store:
//!
//! - **rpm**: GCRA, as governor computes it (burst = the limit, then one request every `60/L` s),
//!   with the theoretical arrival time kept in Redis; exact across instances because the script runs
//!   atomically.
//! - **tpm**: a token bucket (level and last refill time in Redis), refunded at settlement.
//! - **concurrency and reserved cost**: one lease per request in flight (a sorted set scored by
//!   lease expiry and a hash of reserved cost). Settling or dropping the permit removes the lease; a
//!   lease whose instance died expires after [`LEASE`], so a crash cannot hold a slot forever.
//! - **spend**: `INCRBYFLOAT` on one key per level and period, expiring a week after the period.
//!
//! Time comes from each instance's clock (passed to the scripts), so instances should run NTP;
//! skew between them shifts window edges by the skew. Redis's own durability settings decide
//! whether spend survives a Redis restart (use AOF for budgets that must).
//!
//! Virtual keys made through the admin API live in Redis too (hash `gw:vkeys`, hashed secrets only,
//! with a version counter `gw:vkeys:version`), so a key made, rotated or revoked on one instance
//! takes effect on the others within [`KEY_REFRESH`].
//!
//! Keys: `gw:{kind}:{name}` (GCRA and bucket state), `…:inflight`, `…:resv`,
//! `…:spend:{period}:{start}`, `…:minute:{n}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway_core::admission::Refusal;
use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::{mpsc, oneshot};

use crate::clock::WallClock;
use crate::config::LimitsSpec;
use crate::db::StoredKey;
use crate::error::GovernanceError;
use crate::store::{budget_refusal, rate_limited, tokens_to_take, Level, Reservation, UsageView};

/// How long a request's reservation lives in Redis if its instance never settles it.
pub const LEASE: Duration = Duration::from_secs(15 * 60);

/// How often an instance checks Redis for virtual keys changed by another instance.
pub const KEY_REFRESH: Duration = Duration::from_secs(1);

const KEYS_HASH: &str = "gw:vkeys";
const KEYS_VERSION: &str = "gw:vkeys:version";

const KEY_INSERT: &str = r#"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
return 1
"#;

const KEY_UPDATE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
"#;

const KEY_DELETE: &str = r#"
local n = redis.call('HDEL', KEYS[1], ARGV[1])
if n > 0 then redis.call('INCR', KEYS[2]) end
return n
"#;

/// A virtual key as stored in Redis.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyRecord {
    spec: LimitsSpec,
    sha256: String,
    created_ms: i64,
    updated_ms: i64,
}

fn record_json(k: &StoredKey) -> Result<String, String> {
    let mut spec = k.spec.clone();
    spec.secret = None;
    serde_json::to_string(&KeyRecord {
        spec,
        sha256: hex::encode(k.digest),
        created_ms: k.created_ms,
        updated_ms: k.updated_ms,
    })
    .map_err(|e| e.to_string())
}

const WEEK_MS: i64 = 7 * 24 * 3_600_000;

const ADMIT: &str = r#"
local now = tonumber(ARGV[1])
local id = ARGV[2]
local lease = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local function arg(i, j) return tonumber(ARGV[5 + (i - 1) * 5 + j]) end
local function key(i, j) return KEYS[(i - 1) * 5 + j] end
for i = 1, n do
  local expired = redis.call('ZRANGEBYSCORE', key(i, 2), '-inf', now)
  for _, m in ipairs(expired) do
    redis.call('HDEL', key(i, 3), m)
    redis.call('ZREM', key(i, 2), m)
  end
end
for i = 1, n do
  local budget = arg(i, 5)
  if budget >= 0 then
    local spent = tonumber(redis.call('GET', key(i, 4)) or '0')
    local reserved = 0
    for _, v in ipairs(redis.call('HVALS', key(i, 3))) do reserved = reserved + tonumber(v) end
    if spent + 1e-9 >= budget or (reserved > 1e-9 and spent + reserved + cost > budget + 1e-9) then
      return {'budget', tostring(i), tostring(spent), tostring(reserved)}
    end
  end
end
for i = 1, n do
  local max = arg(i, 4)
  if max > 0 and redis.call('ZCARD', key(i, 2)) >= max then
    return {'concurrency', tostring(i), '1000'}
  end
end
local buckets = {}
for i = 1, n do
  local tpm = arg(i, 2)
  if tpm > 0 then
    local st = redis.call('HMGET', key(i, 1), 'tpm_level', 'tpm_ts')
    local lvl = tonumber(st[1] or tpm)
    local ts = tonumber(st[2] or now)
    if now > ts then lvl = lvl + (now - ts) * tpm / 60000; ts = now end
    if lvl > tpm then lvl = tpm end
    local need = arg(i, 3)
    if lvl < need then
      return {'tpm', tostring(i), tostring(math.ceil((need - lvl) * 60000 / tpm))}
    end
    buckets[i] = {lvl - need, ts}
  end
end
local tats = {}
for i = 1, n do
  local rpm = arg(i, 1)
  if rpm > 0 then
    local t = 60000 / rpm
    local tau = t * (rpm - 1)
    local tat = tonumber(redis.call('HGET', key(i, 1), 'tat') or now)
    if now < tat - tau then
      return {'rpm', tostring(i), tostring(math.ceil(tat - tau - now))}
    end
    tats[i] = math.max(tat, now) + t
  end
end
for i = 1, n do
  if tats[i] then redis.call('HSET', key(i, 1), 'tat', string.format('%.3f', tats[i])) end
  if buckets[i] then
    redis.call('HSET', key(i, 1), 'tpm_level', string.format('%.3f', buckets[i][1]), 'tpm_ts', string.format('%.0f', buckets[i][2]))
  end
  redis.call('PEXPIRE', key(i, 1), 86400000)
  redis.call('ZADD', key(i, 2), now + lease, id)
  redis.call('HSET', key(i, 3), id, tostring(cost))
  redis.call('HINCRBY', key(i, 5), 'requests', 1)
  redis.call('PEXPIRE', key(i, 5), 120000)
end
return {'ok'}
"#;

const FINISH: &str = r#"
local now = tonumber(ARGV[1])
local id = ARGV[2]
local n = tonumber(ARGV[3])
local used = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local function arg(i, j) return tonumber(ARGV[5 + (i - 1) * 3 + j]) end
local function key(i, j) return KEYS[(i - 1) * 5 + j] end
for i = 1, n do
  local present = redis.call('ZREM', key(i, 2), id)
  redis.call('HDEL', key(i, 3), id)
  local tpm = arg(i, 1)
  -- A release of a reservation that was never made (its admission timed out before Redis ran
  -- it) gives nothing back.
  if present == 0 and used == 0 and cost == 0 then tpm = 0 end
  if tpm > 0 then
    local st = redis.call('HMGET', key(i, 1), 'tpm_level', 'tpm_ts')
    if st[1] then
      local lvl = tonumber(st[1])
      local ts = tonumber(st[2] or now)
      if now > ts then lvl = lvl + (now - ts) * tpm / 60000; ts = now end
      lvl = lvl + arg(i, 2) - used
      if lvl > tpm then lvl = tpm end
      redis.call('HSET', key(i, 1), 'tpm_level', string.format('%.3f', lvl), 'tpm_ts', string.format('%.0f', ts))
    end
  end
  if cost > 0 then
    redis.call('INCRBYFLOAT', key(i, 4), cost)
    local exp = arg(i, 3)
    if exp > 0 then redis.call('PEXPIREAT', key(i, 4), exp) end
  end
  if used > 0 then
    redis.call('HINCRBY', key(i, 5), 'tokens', used)
    redis.call('PEXPIRE', key(i, 5), 120000)
  end
end
return 'ok'
"#;

enum Job {
    Finish(Reservation, Option<(u64, f64)>),
    Flush(oneshot::Sender<()>),
}

/// Counters kept in Redis.
pub(crate) struct RedisStore {
    conn: ConnectionManager,
    clock: Arc<dyn WallClock>,
    admit: Script,
    jobs: mpsc::UnboundedSender<Job>,
    /// Settlements queued and not yet applied.
    pending: Arc<AtomicU64>,
    prefix: String,
    next_id: AtomicU64,
}

/// How long an admission refused for concurrency, tokens or budget waits for this instance's
/// queued settlements before it asks again.
const SETTLE_WAIT: Duration = Duration::from_millis(200);

/// How long one call to Redis may take, waiting for a reconnection included: past it the call
/// fails (a request is refused with 503) instead of waiting for a store that does not answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the gateway tries to reach Redis at start before it gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis call bounded by [`CALL_TIMEOUT`], its error as the admin API and refusals say it.
async fn bounded<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("governance store unavailable: {e}")),
        Err(_) => Err(format!(
            "governance store unavailable: Redis did not answer within {} s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

fn keys_of(l: &Level, now_ms: i64) -> [String; 5] {
    let base = format!("gw:{}:{}", l.kind.as_str(), l.name);
    let start = l.limits.period.bounds(now_ms).0;
    [
        base.clone(),
        format!("{base}:inflight"),
        format!("{base}:resv"),
        format!("{base}:spend:{}:{start}", l.limits.period.label()),
        format!("{base}:minute:{}", now_ms.div_euclid(60_000)),
    ]
}

impl RedisStore {
    /// Connects (failing fast if Redis is unreachable) and starts the settlement task.
    pub async fn connect(
        url: &str,
        clock: Arc<dyn WallClock>,
    ) -> Result<Arc<RedisStore>, GovernanceError> {
        let client = redis::Client::open(url)?;
        // Short connection and answer timeouts, and few quick retries: a request must not wait
        // on a reconnection for longer than CALL_TIMEOUT allows anyway.
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(2)
            .set_factor(50)
            .set_max_delay(500);
        let connecting = async {
            let mut conn = client.get_connection_manager_with_config(manager).await?;
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(c) => c?,
            Err(_) => {
                return Err(GovernanceError::Store(format!(
                    "Redis at {} did not answer within {} s",
                    gateway_core::observe::redact_url(url),
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce).map_err(|e| GovernanceError::Random(e.to_string()))?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicU64::new(0));
        let store = Arc::new(RedisStore {
            conn: conn.clone(),
            clock: clock.clone(),
            admit: Script::new(ADMIT),
            jobs,
            pending: Arc::clone(&pending),
            prefix: hex::encode(nonce),
            next_id: AtomicU64::new(0),
        });
        tokio::spawn(settler(conn, clock, rx, pending));
        Ok(store)
    }

    pub async fn reserve(
        &self,
        levels: &[Level],
        tokens: u64,
        cost: f64,
    ) -> Result<Reservation, Refusal> {
        // Settlements go to Redis after the response: a client's next request can arrive before
        // its previous one gave back its concurrency slot, tokens or reserved dollars. Refused for
        // one of those while some of ours were queued when it started: apply them, ask again.
        let queued = self.pending.load(Ordering::Acquire);
        match self.admit_once(levels, tokens, cost).await {
            Err((refusal, true)) if queued > 0 || self.pending.load(Ordering::Acquire) > 0 => {
                let _ = tokio::time::timeout(SETTLE_WAIT, self.flush()).await;
                self.admit_once(levels, tokens, cost)
                    .await
                    .map_err(|(r, _)| match r {
                        Refusal::Unavailable(_) => refusal,
                        r => r,
                    })
            }
            other => other.map_err(|(r, _)| r),
        }
    }

    /// One admission; a refusal says whether settling the reservations in flight could lift it
    /// (concurrency, tokens, budget; not rpm, whose cells are not given back).
    async fn admit_once(
        &self,
        levels: &[Level],
        tokens: u64,
        cost: f64,
    ) -> Result<Reservation, (Refusal, bool)> {
        let now = self.clock.now_ms();
        let id = format!(
            "{}-{}",
            self.prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let mut inv = self.admit.prepare_invoke();
        for l in levels {
            for k in keys_of(l, now) {
                inv.key(k);
            }
        }
        inv.arg(now)
            .arg(&id)
            .arg(LEASE.as_millis() as i64)
            .arg(cost)
            .arg(levels.len());
        let mut taken = Vec::with_capacity(levels.len());
        for l in levels {
            let t = tokens_to_take(&l.limits, tokens);
            taken.push(t);
            inv.arg(l.limits.rpm.unwrap_or(0))
                .arg(l.limits.tpm.unwrap_or(0))
                .arg(t)
                .arg(l.limits.max_concurrent.unwrap_or(0))
                .arg(l.limits.budget_usd.unwrap_or(-1.0));
        }
        let mut conn = self.conn.clone();
        // Until Redis answers, the reservation may or may not exist: if the answer never
        // comes (a timeout, the client gone), it is released, which is a no-op for one that
        // was never made.
        let mut pending = Unanswered {
            store: self,
            reservation: Some(Reservation {
                id: id.clone(),
                levels: levels.to_vec(),
                taken: taken.clone(),
                cost: 0.0,
            }),
        };
        let answer: Vec<String> = bounded(inv.invoke_async(&mut conn))
            .await
            .map_err(|e| (Refusal::Unavailable(e), false))?;
        pending.reservation = None;
        let level_at = |i: Option<&String>| -> Option<&Level> {
            let i: usize = i?.parse().ok()?;
            levels.get(i.checked_sub(1)?)
        };
        let num = |s: Option<&String>| s.and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        match (answer.first().map(String::as_str), level_at(answer.get(1))) {
            (Some("ok"), _) => Ok(Reservation {
                id,
                levels: levels.to_vec(),
                taken,
                cost,
            }),
            (Some("budget"), Some(l)) => Err((
                budget_refusal(
                    l,
                    l.limits.budget_usd.unwrap_or(0.0),
                    num(answer.get(2)),
                    num(answer.get(3)),
                    cost,
                    now,
                ),
                true,
            )),
            (Some(what), Some(l)) => {
                let wait = Duration::from_millis(num(answer.get(2)).max(1.0) as u64);
                let label = match what {
                    "concurrency" => format!(
                        "concurrency ({} in flight)",
                        l.limits.max_concurrent.unwrap_or(0)
                    ),
                    "tpm" => format!("tokens-per-minute ({})", l.limits.tpm.unwrap_or(0)),
                    _ => format!("requests-per-minute ({})", l.limits.rpm.unwrap_or(0)),
                };
                Err((rate_limited(l, &label, wait), what != "rpm"))
            }
            _ => Err((
                Refusal::Unavailable(format!("governance store answered {answer:?}")),
                false,
            )),
        }
    }

    async fn key_script(&self, src: &str, name: &str, record: &str) -> Result<i64, String> {
        let mut conn = self.conn.clone();
        let script = Script::new(src);
        let mut inv = script.key(KEYS_HASH);
        inv.key(KEYS_VERSION).arg(name).arg(record);
        bounded(inv.invoke_async(&mut conn)).await
    }

    pub async fn insert_key(&self, k: &StoredKey) -> Result<(), String> {
        match self
            .key_script(KEY_INSERT, &k.spec.name, &record_json(k)?)
            .await?
        {
            0 => Err(format!("virtual key {:?} already exists", k.spec.name)),
            _ => Ok(()),
        }
    }

    pub async fn update_key(&self, k: &StoredKey) -> Result<(), String> {
        match self
            .key_script(KEY_UPDATE, &k.spec.name, &record_json(k)?)
            .await?
        {
            0 => Err(format!("virtual key {:?} does not exist", k.spec.name)),
            _ => Ok(()),
        }
    }

    pub async fn delete_key(&self, name: &str) -> Result<(), String> {
        self.key_script(KEY_DELETE, name, "").await.map(|_| ())
    }

    /// The version of the key set (bumped by every change).
    pub async fn keys_version(&self) -> Result<u64, String> {
        let mut conn = self.conn.clone();
        let mut get = redis::cmd("GET");
        get.arg(KEYS_VERSION);
        let v: Option<u64> = bounded(get.query_async(&mut conn)).await?;
        Ok(v.unwrap_or(0))
    }

    /// All API-made keys and the version they were read at.
    pub async fn load_keys(&self) -> Result<(u64, Vec<StoredKey>), String> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic().get(KEYS_VERSION).hgetall(KEYS_HASH);
        let (version, all): (Option<u64>, Vec<(String, String)>) =
            bounded(pipe.query_async(&mut conn)).await?;
        let mut keys = Vec::with_capacity(all.len());
        for (name, json) in all {
            let parsed = serde_json::from_str::<KeyRecord>(&json).ok().and_then(|r| {
                let digest = <[u8; 32]>::try_from(hex::decode(&r.sha256).ok()?.as_slice()).ok()?;
                Some(StoredKey {
                    spec: r.spec,
                    digest,
                    created_ms: r.created_ms,
                    updated_ms: r.updated_ms,
                })
            });
            match parsed {
                Some(k) => keys.push(k),
                None => {
                    tracing::error!(key = %name, "malformed virtual key record in Redis; skipped")
                }
            }
        }
        Ok((version.unwrap_or(0), keys))
    }

    pub fn finish(&self, r: Reservation, actual: Option<(u64, f64)>) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.jobs.send(Job::Finish(r, actual)).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            tracing::error!("governance settlement task has stopped: a reservation stays until its lease expires");
        }
    }

    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub async fn usage(&self, l: &Level) -> Result<UsageView, String> {
        let now = self.clock.now_ms();
        let [state, inflight, resv, spend, minute] = keys_of(l, now);
        let mut conn = self.conn.clone();
        #[allow(clippy::type_complexity)]
        let (spent, costs, in_flight, minute_counts, bucket, period_counts): (
            Option<f64>,
            Vec<f64>,
            u64,
            (Option<u64>, Option<u64>),
            (Option<f64>, Option<f64>),
            (Option<u64>, Option<u64>),
        ) = {
            let mut pipe = redis::pipe();
            pipe.get(&spend)
                .hvals(&resv)
                .zcount(&inflight, now, "+inf")
                .hget(&minute, &["requests", "tokens"])
                .hget(&state, &["tpm_level", "tpm_ts"])
                .hget(period_counts_key(&spend), &["requests", "tokens"]);
            bounded(pipe.query_async(&mut conn)).await?
        };
        let tpm_available = l.limits.tpm.map(|cap| match bucket {
            (Some(level), Some(ts)) => {
                let refilled = level + ((now as f64 - ts).max(0.0)) * cap as f64 / 60_000.0;
                refilled.min(cap as f64).floor() as i64
            }
            _ => cap as i64,
        });
        Ok(UsageView {
            spend_usd: spent.unwrap_or(0.0),
            reserved_usd: costs.iter().sum(),
            in_flight,
            requests_this_minute: minute_counts.0.unwrap_or(0),
            tokens_this_minute: minute_counts.1.unwrap_or(0),
            requests_this_period: period_counts.0.unwrap_or(0),
            tokens_this_period: period_counts.1.unwrap_or(0),
            tpm_available,
        })
    }
}

/// An admission sent to Redis and not yet answered: released when dropped unanswered.
struct Unanswered<'s> {
    store: &'s RedisStore,
    reservation: Option<Reservation>,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.store.finish(r, None);
        }
    }
}

/// The hash of a level's requests and tokens settled in a budget period, beside its spend
/// counter (informational: counted after the settlement, not inside its script).
fn period_counts_key(spend_key: &str) -> String {
    format!("{spend_key}:counts")
}

/// Applies settlements and releases in order, retrying while Redis is unreachable.
async fn settler(
    mut conn: ConnectionManager,
    clock: Arc<dyn WallClock>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    pending: Arc<AtomicU64>,
) {
    let script = Script::new(FINISH);
    while let Some(job) = rx.recv().await {
        let (r, actual) = match job {
            Job::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Job::Finish(r, actual) => (r, actual),
        };
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=6 {
            let now = clock.now_ms();
            let (used, cost) = actual.unwrap_or((0, 0.0));
            let mut inv = script.prepare_invoke();
            for l in &r.levels {
                for k in keys_of(l, now) {
                    inv.key(k);
                }
            }
            inv.arg(now)
                .arg(&r.id)
                .arg(r.levels.len())
                .arg(used)
                .arg(cost);
            for (l, taken) in r.levels.iter().zip(&r.taken) {
                let expire_at = l.limits.period.bounds(now).1.map_or(0, |end| end + WEEK_MS);
                inv.arg(l.limits.tpm.unwrap_or(0))
                    .arg(*taken)
                    .arg(expire_at);
            }
            match bounded(inv.invoke_async::<String>(&mut conn)).await {
                Ok(_) => {
                    if let Some((used, _)) = actual {
                        let mut pipe = redis::pipe();
                        for l in &r.levels {
                            let key = period_counts_key(&keys_of(l, now)[3]);
                            pipe.hincr(&key, "requests", 1)
                                .ignore()
                                .hincr(&key, "tokens", used)
                                .ignore();
                            if let Some(end) = l.limits.period.bounds(now).1 {
                                pipe.cmd("PEXPIREAT").arg(&key).arg(end + WEEK_MS).ignore();
                            }
                        }
                        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                            tracing::warn!(error = %e, "could not count a settled request in its period");
                        }
                    }
                    break;
                }
                Err(e) if attempt < 6 => {
                    tracing::warn!(error = %e, attempt, "governance settlement failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 3;
                }
                Err(e) => {
                    tracing::error!(error = %e, cost, "governance settlement lost: Redis unreachable");
                }
            }
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}
