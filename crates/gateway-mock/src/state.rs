//! Shared server state: keys, counters, rate-limit windows, faults and recorded requests.
//!
//! Hot-path rules: counters are atomics; faults are read through `arc-swap`; the key table is a
//! `RwLock` taken for reading (a write only the first time a key string is seen); a key's
//! rate-limit window and the recorded request sit behind short `std` mutexes never held across
//! an `.await`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use crate::plan::Reply;
use crate::{Dialect, Faults, RecordedRequest};

/// Default length of a rate-limit window.
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Limits reported for keys without a configured request limit (high enough for benchmarks).
const UNLIMITED_RPM: u64 = 1_000_000;
/// Limits reported for keys without a configured token limit.
const UNLIMITED_TPM: u64 = 1_000_000_000;

/// Locks a mutex, ignoring poisoning (the data is counters and snapshots).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Per-key request and token limits per minute.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    requests: u64,
    tokens: u64,
}

/// Which limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitKind {
    Requests,
    Tokens,
}

/// The rate-limit state after one request, for headers and 429 bodies.
#[derive(Debug, Clone)]
pub(crate) struct RateSnapshot {
    pub req_limit: u64,
    pub req_remaining: u64,
    pub tok_limit: u64,
    pub tok_remaining: u64,
    pub tok_used: u64,
    pub req_used: u64,
    /// Time until the window resets.
    pub reset: Duration,
    /// The reset instant as Unix seconds (rounded up).
    pub reset_unix: u64,
    /// Set when the request was refused.
    pub limited: Option<LimitKind>,
    /// Tokens the refused request asked for.
    pub requested_tokens: u64,
}

/// Everything the mock knows about one key string.
#[derive(Debug)]
pub(crate) struct KeyEntry {
    limits: Limits,
    window_len: Duration,
    count: AtomicU64,
    window: Mutex<Window>,
    pub faults: ArcSwapOption<Faults>,
    pub fault_seq: AtomicU64,
}

impl KeyEntry {
    fn new(limits: Limits, window_len: Duration) -> Self {
        Self {
            limits,
            window_len,
            count: AtomicU64::new(0),
            window: Mutex::new(Window {
                start: Instant::now(),
                requests: 0,
                tokens: 0,
            }),
            faults: ArcSwapOption::empty(),
            fault_seq: AtomicU64::new(0),
        }
    }

    /// Accounts one request of `tokens` tokens in the current fixed window, or refuses it.
    pub(crate) fn rate_check(&self, tokens: u64) -> RateSnapshot {
        let now = Instant::now();
        let mut w = lock(&self.window);
        if now.duration_since(w.start) >= self.window_len {
            w.start = now;
            w.requests = 0;
            w.tokens = 0;
        }
        let req_limit = self.limits.rpm.unwrap_or(UNLIMITED_RPM);
        let tok_limit = self.limits.tpm.unwrap_or(UNLIMITED_TPM);
        let limited = if self.limits.rpm.is_some_and(|l| w.requests + 1 > l) {
            Some(LimitKind::Requests)
        } else if self.limits.tpm.is_some_and(|l| w.tokens + tokens > l) {
            Some(LimitKind::Tokens)
        } else {
            None
        };
        if limited.is_none() {
            w.requests += 1;
            w.tokens += tokens;
        }
        let reset = (w.start + self.window_len).saturating_duration_since(now);
        let snap = RateSnapshot {
            req_limit,
            req_remaining: req_limit.saturating_sub(w.requests),
            tok_limit,
            tok_remaining: tok_limit.saturating_sub(w.tokens),
            tok_used: w.tokens,
            req_used: w.requests,
            reset,
            reset_unix: 0,
            limited,
            requested_tokens: tokens,
        };
        drop(w);
        let reset_unix = (SystemTime::now() + reset)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .unwrap_or(0);
        RateSnapshot { reset_unix, ..snap }
    }

    fn reset_window(&self) {
        let mut w = lock(&self.window);
        w.start = Instant::now();
        w.requests = 0;
        w.tokens = 0;
    }
}

/// Timing applied to every response, changeable at runtime.
#[derive(Debug, Default)]
pub(crate) struct Timing {
    latency_ns: AtomicU64,
    ttft_ns: AtomicU64,
    chunk_ns: AtomicU64,
}

fn to_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Timing {
    pub(crate) fn set_latency(&self, d: Duration) {
        self.latency_ns.store(to_ns(d), Ordering::Relaxed);
    }
    pub(crate) fn set_ttft(&self, d: Duration) {
        self.ttft_ns.store(to_ns(d), Ordering::Relaxed);
    }
    pub(crate) fn set_chunk_delay(&self, d: Duration) {
        self.chunk_ns.store(to_ns(d), Ordering::Relaxed);
    }
    pub(crate) fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed))
    }
    pub(crate) fn ttft(&self) -> Duration {
        Duration::from_nanos(self.ttft_ns.load(Ordering::Relaxed))
    }
    pub(crate) fn chunk_delay(&self) -> Duration {
        Duration::from_nanos(self.chunk_ns.load(Ordering::Relaxed))
    }
}

/// Issued Vertex access tokens and their expiry.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    pub issued: Mutex<HashMap<String, Instant>>,
    pub seq: AtomicU64,
    pub fetches: AtomicU64,
}

/// The last request, overall and per dialect.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    pub any: Option<Arc<RecordedRequest>>,
    pub by_dialect: [Option<Arc<RecordedRequest>>; Dialect::COUNT],
}

/// Immutable configuration fixed at start.
#[derive(Debug)]
pub(crate) struct Config {
    pub reply: Reply,
    /// Registered API keys (bearer / api-key / x-api-key / x-goog-api-key dialects).
    pub api_keys: HashSet<String>,
    pub limits: HashMap<String, Limits>,
    /// Registered AWS access key id to secret.
    pub aws_keys: HashMap<String, String>,
    pub token_lifetime: Duration,
    /// Length of the fixed rate-limit windows.
    pub rate_window: Duration,
    /// Public key (PEM) to verify every JWT assertion with, besides the built-in test key.
    pub jwt_public_key: Option<String>,
}

/// The state shared by the server task and every [`MockServer`](crate::MockServer) handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub timing: Timing,
    pub faults: ArcSwap<Faults>,
    pub fault_seq: AtomicU64,
    keys: RwLock<HashMap<String, Arc<KeyEntry>>>,
    pub total: AtomicU64,
    pub per_dialect: [AtomicU64; Dialect::COUNT],
    pub seq: AtomicU64,
    pub tokens: Tokens,
    pub recorded: Mutex<Recorded>,
    /// Becomes `true` (or closed) when the server stops; hung requests wait on it.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        faults: Faults,
        key_faults: Vec<(String, Faults)>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut keys = HashMap::new();
        for k in config.api_keys.iter().chain(config.aws_keys.keys()) {
            let limits = config.limits.get(k).copied().unwrap_or_default();
            keys.insert(
                k.clone(),
                Arc::new(KeyEntry::new(limits, config.rate_window)),
            );
        }
        let shared = Self {
            config,
            timing: Timing::default(),
            faults: ArcSwap::from_pointee(faults),
            fault_seq: AtomicU64::new(0),
            keys: RwLock::new(keys),
            total: AtomicU64::new(0),
            per_dialect: Default::default(),
            seq: AtomicU64::new(0),
            tokens: Tokens::default(),
            recorded: Mutex::new(Recorded::default()),
            shutdown,
        };
        for (k, f) in key_faults {
            shared.entry(&k).faults.store(Some(Arc::new(f)));
        }
        shared
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The entry for a key string, created on first sight.
    pub(crate) fn entry(&self, key: &str) -> Arc<KeyEntry> {
        if let Some(e) = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
        {
            return e.clone();
        }
        let mut map = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(key.to_owned())
            .or_insert_with(|| {
                let limits = self.config.limits.get(key).copied().unwrap_or_default();
                Arc::new(KeyEntry::new(limits, self.config.rate_window))
            })
            .clone()
    }

    /// Counts one request made with `key` (and towards the totals).
    pub(crate) fn count(&self, dialect: Dialect, entry: Option<&KeyEntry>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.per_dialect[dialect.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(e) = entry {
            e.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn requests_for_key(&self, key: &str) -> u64 {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .map_or(0, |e| e.count.load(Ordering::Relaxed))
    }

    pub(crate) fn per_key_counts(&self) -> Vec<(String, u64)> {
        let map = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<(String, u64)> = map
            .iter()
            .map(|(k, e)| (k.clone(), e.count.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        v.sort();
        v
    }

    pub(crate) fn reset_counts(&self) {
        self.total.store(0, Ordering::Relaxed);
        for c in &self.per_dialect {
            c.store(0, Ordering::Relaxed);
        }
        self.tokens.fetches.store(0, Ordering::Relaxed);
        let map = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for e in map.values() {
            e.count.store(0, Ordering::Relaxed);
        }
    }

    /// Counts, windows and faults back to a clean state (the control endpoint's reset).
    pub(crate) fn reset_all(&self) {
        self.reset_counts();
        self.faults.store(Arc::new(Faults::default()));
        let map = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for e in map.values() {
            e.reset_window();
            e.faults.store(None);
        }
        *lock(&self.recorded) = Recorded::default();
    }

    pub(crate) fn set_key_faults(&self, key: &str, f: Faults) {
        self.entry(key).faults.store(Some(Arc::new(f)));
    }

    pub(crate) fn record(&self, req: Arc<RecordedRequest>) {
        let idx = req.dialect.index();
        let mut r = lock(&self.recorded);
        r.by_dialect[idx] = Some(req.clone());
        r.any = Some(req);
    }

    /// Whether `key` is acceptable for the api-key dialects.
    pub(crate) fn api_key_ok(&self, key: &str) -> bool {
        if self.config.api_keys.is_empty() {
            !key.is_empty()
        } else {
            self.config.api_keys.contains(key)
        }
    }
}
