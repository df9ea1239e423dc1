//! Counters behind admission: the embedded store (in memory, spend persisted to SQLite) and the
//! shared one (Redis, see [`crate::redis_store`]).
//!
//! Both check every level of the hierarchy first and only then reserve on all of them, so a request
//! refused at the customer level takes nothing from its key or team. Checks run in this order:
//! budget, concurrency, tokens per minute, requests per minute.
//!
//! - **rpm** is GCRA (governor): a limit `L` lets `L` requests through back to back, then one every
//!   `60/L` seconds. It counts admitted requests, whether they then succeed or fail. Changing a
//!   limit keeps the share of the minute already used.
//! - **tpm** is a token bucket of `tpm` tokens refilled continuously at `tpm` per minute. Admission
//!   takes the request's estimate (capped at the bucket size, so an oversized request waits for a
//!   full bucket instead of never passing); settlement gives back the estimate minus the actual
//!   tokens (the bucket may go into debt when a request used more than estimated).
//! - **concurrency** is a slot taken at admission and given back on settle or drop.
//! - **budget**: spend of the current period plus the cost reserved by requests in flight plus this
//!   request's estimated cost must stay within the budget; a spent budget refuses even requests whose
//!   cost cannot be estimated. Settlement adds the actual cost to the period current at that moment.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gateway_core::admission::Refusal;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use crate::clock::{GovernorClock, WallClock};
use crate::config::{Kind, Limits};
use crate::db::{DbHandle, SpendRow, WindowRow};
use crate::period::{rfc3339, Period};
use crate::redis_store::RedisStore;

/// Small tolerance for floating-point dollars.
const EPS: f64 = 1e-9;

/// One level of the hierarchy a request passes: its key, team and customer.
#[derive(Debug, Clone)]
pub(crate) struct Level {
    pub kind: Kind,
    pub name: Arc<str>,
    pub limits: Arc<Limits>,
}

/// What one admitted request holds.
#[derive(Debug)]
pub(crate) struct Reservation {
    pub id: String,
    pub levels: Vec<Level>,
    /// Tokens taken from each level's bucket (0 where the level has no tpm).
    pub taken: Vec<u64>,
    /// Estimated cost reserved on every level.
    pub cost: f64,
}

/// Current usage of one level, for the admin API.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct UsageView {
    /// Settled spend of the current budget period.
    pub spend_usd: f64,
    /// Cost reserved by requests in flight.
    pub reserved_usd: f64,
    /// Requests in flight.
    pub in_flight: u64,
    /// Requests admitted in the current UTC minute.
    pub requests_this_minute: u64,
    /// Tokens settled in the current UTC minute.
    pub tokens_this_minute: u64,
    /// Requests settled in the current budget period (all time without a period).
    pub requests_this_period: u64,
    /// Their tokens.
    pub tokens_this_period: u64,
    /// Tokens the tpm bucket holds now (when a tpm is set).
    pub tpm_available: Option<i64>,
}

/// The store in use.
#[derive(Clone)]
pub(crate) enum Counters {
    Embedded(Arc<Embedded>),
    Redis(Arc<RedisStore>),
}

impl Counters {
    pub async fn reserve(
        &self,
        levels: &[Level],
        tokens: u64,
        cost: f64,
    ) -> Result<Reservation, Refusal> {
        match self {
            Counters::Embedded(e) => e.reserve(levels, tokens, cost),
            Counters::Redis(r) => r.reserve(levels, tokens, cost).await,
        }
    }

    pub fn settle(&self, r: Reservation, tokens: u64, cost: f64) {
        match self {
            Counters::Embedded(e) => e.finish(&r, Some((tokens, cost))),
            Counters::Redis(s) => s.finish(r, Some((tokens, cost))),
        }
    }

    pub fn release(&self, r: Reservation) {
        match self {
            Counters::Embedded(e) => e.finish(&r, None),
            Counters::Redis(s) => s.finish(r, None),
        }
    }

    pub async fn usage(&self, level: &Level) -> Result<UsageView, String> {
        match self {
            Counters::Embedded(e) => Ok(e.usage(level)),
            Counters::Redis(r) => r.usage(level).await,
        }
    }

    pub async fn flush(&self) {
        match self {
            Counters::Redis(r) => r.flush().await,
            Counters::Embedded(e) => e.save_windows(),
        }
    }
}

/// The refusal for a budget that cannot cover a request.
pub(crate) fn budget_refusal(
    l: &Level,
    budget: f64,
    spent: f64,
    reserved: f64,
    cost: f64,
    now_ms: i64,
) -> Refusal {
    let (_, end) = l.limits.period.bounds(now_ms);
    let what = format!(
        "budget of {} '{}' (${} {})",
        l.kind.noun(),
        l.name,
        dollars(budget),
        l.limits.period
    );
    let reset = match end {
        Some(end) => format!("; it resets at {}", rfc3339(end)),
        None => "; it does not reset".to_string(),
    };
    let message = if spent + EPS >= budget {
        format!("{what} is spent: ${spent:.4} used{reset}")
    } else {
        format!(
            "{what} cannot cover this request: ${spent:.4} spent, ${reserved:.4} reserved by requests in flight, this request may cost up to ${cost:.4}{reset}"
        )
    };
    Refusal::BudgetExceeded {
        message,
        resets_in: end.map(|e| Duration::from_millis(u64::try_from(e - now_ms).unwrap_or(0))),
    }
}

/// An amount of USD as budgets are written: cents, or as many decimals as a smaller amount
/// needs to show (`0.0001`, not `0.00`).
fn dollars(usd: f64) -> String {
    if usd >= 0.01 || usd == 0.0 {
        return format!("{usd:.2}");
    }
    let s = format!("{usd:.8}");
    s.trim_end_matches('0').to_owned()
}

/// Whether a budget refuses: spent already, or, with other requests in flight, spend +
/// their reservations + this estimate exceed it.
///
/// A request alone is admitted while the budget is not spent, even if its estimate (which
/// assumes the whole output limit, or `default_output_tokens`) is larger than what is
/// left: refusing it would refuse a key whose budget is not spent, often on its first request.
/// So a budget can be passed by one request's cost at most, never by a concurrent burst: the
/// requests that arrive while it is in flight must fit beside its reservation.
pub(crate) fn budget_refuses(budget: f64, spent: f64, reserved: f64, cost: f64) -> bool {
    spent + EPS >= budget || (reserved > EPS && spent + reserved + cost > budget + EPS)
}

pub(crate) fn rate_limited(l: &Level, what: &str, retry_after: Duration) -> Refusal {
    Refusal::RateLimited {
        message: format!("{what} limit of {} '{}' reached", l.kind.noun(), l.name),
        retry_after,
    }
}

/// The tokens a level's bucket gives for an estimate: capped at the bucket size.
pub(crate) fn tokens_to_take(limits: &Limits, estimate: u64) -> u64 {
    limits.tpm.map_or(0, |cap| estimate.min(cap))
}

// ---------------------------------------------------------------------------------------------
// Embedded store

/// A governor state store whose value can be saved and put back, so a request refused at a later
/// level of the hierarchy does not consume an rpm cell at an earlier one. Only touched under the
/// embedded store's mutex.
#[derive(Debug, Clone, Default)]
struct RevertibleState(Arc<AtomicU64>);

impl StateStore for RevertibleState {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let prev = self.0.load(Ordering::Acquire);
        let (t, next) = f((prev != 0).then(|| Nanos::from(prev)))?;
        self.0.store(next.as_u64().max(1), Ordering::Release);
        Ok(t)
    }
}

type Gcra = RateLimiter<NotKeyed, RevertibleState, GovernorClock, NoOpMiddleware<Nanos>>;

struct Rpm {
    limit: u32,
    state: RevertibleState,
    limiter: Gcra,
    /// The limiter's origin (governor keeps times relative to it), in clock nanoseconds.
    origin: u64,
}

impl Rpm {
    /// A limiter for `limit` per minute. `previous` carries the old limiter's backlog over, so
    /// changing a limit keeps the share of the minute already used instead of granting a new burst.
    fn new(limit: u32, clock: &Arc<dyn WallClock>, previous: Option<&Rpm>) -> Option<Rpm> {
        Rpm::resumed(limit, clock, previous.map_or(0, Rpm::tat_ns))
    }

    /// A limiter for `limit` per minute whose backlog runs until `tat_ns` (unix nanoseconds, the
    /// theoretical arrival time of an earlier limiter; 0 for none).
    fn resumed(limit: u32, clock: &Arc<dyn WallClock>, tat_ns: u64) -> Option<Rpm> {
        let burst = std::num::NonZeroU32::new(limit)?;
        let state = RevertibleState::default();
        let gclock = GovernorClock(clock.clone());
        let origin = governor::clock::Clock::now(&gclock).as_u64();
        if tat_ns != 0 {
            let backlog = tat_ns.saturating_sub(origin);
            state.0.store(backlog.max(1), Ordering::Release);
        }
        let limiter = RateLimiter::new(Quota::per_minute(burst), state.clone(), gclock);
        Some(Rpm {
            limit,
            state,
            limiter,
            origin,
        })
    }

    /// The theoretical arrival time, unix nanoseconds (0 before the first request).
    fn tat_ns(&self) -> u64 {
        match self.state.0.load(Ordering::Acquire) {
            0 => 0,
            tat => self.origin + tat,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    cap: u64,
    level: f64,
    last_ms: i64,
}

impl Bucket {
    fn refill(&mut self, now_ms: i64) {
        let elapsed = (now_ms - self.last_ms).max(0) as f64;
        self.level = (self.level + elapsed * self.cap as f64 / 60_000.0).min(self.cap as f64);
        self.last_ms = self.last_ms.max(now_ms);
    }

    fn wait_for(&self, need: u64) -> Duration {
        let missing = need as f64 - self.level;
        Duration::from_millis((missing * 60_000.0 / self.cap as f64).ceil().max(1.0) as u64)
    }
}

#[derive(Default)]
struct Entity {
    rpm: Option<Rpm>,
    tpm: Option<Bucket>,
    in_flight: u64,
    reserved_usd: f64,
    minute: i64,
    minute_requests: u64,
    minute_tokens: u64,
    /// The windows saved before a restart, taken up by the first [`Entity::sync`].
    saved: Option<WindowRow>,
}

impl Entity {
    /// A level's entity, resuming the windows saved before a restart, if any.
    fn resumed(saved: Option<WindowRow>) -> Entity {
        let mut e = Entity::default();
        if let Some(w) = saved {
            e.minute = w.minute;
            e.minute_requests = w.minute_requests;
            e.minute_tokens = w.minute_tokens;
            e.saved = Some(w);
        }
        e
    }

    /// Brings the limiters in line with the level's current limits.
    fn sync(&mut self, limits: &Limits, clock: &Arc<dyn WallClock>, now_ms: i64) {
        let saved = self.saved.take();
        match limits.rpm {
            Some(l) if self.rpm.as_ref().map(|r| r.limit) != Some(l) => {
                self.rpm = match (&self.rpm, &saved) {
                    (None, Some(w)) => Rpm::resumed(l, clock, w.rpm_tat_ns),
                    _ => Rpm::new(l, clock, self.rpm.as_ref()),
                }
            }
            None => self.rpm = None,
            _ => {}
        }
        match (limits.tpm, &mut self.tpm) {
            (None, t) => *t = None,
            (Some(cap), Some(b)) => {
                b.refill(now_ms);
                b.cap = cap;
                b.level = b.level.min(cap as f64);
            }
            (Some(cap), t) => {
                let mut b = Bucket {
                    cap,
                    level: cap as f64,
                    last_ms: now_ms,
                };
                if let Some((level, last_ms)) = saved.as_ref().and_then(|w| w.tpm) {
                    b.level = level.min(cap as f64);
                    b.last_ms = last_ms.min(now_ms);
                    b.refill(now_ms);
                }
                *t = Some(b);
            }
        }
        let minute = now_ms.div_euclid(60_000);
        if self.minute != minute {
            self.minute = minute;
            self.minute_requests = 0;
            self.minute_tokens = 0;
        }
    }
}

/// A level's identity in the maps below.
type LevelId = (Kind, Arc<str>);

#[derive(Default)]
struct State {
    entities: HashMap<LevelId, Entity>,
    /// Windows saved before a restart for levels not seen since.
    saved: HashMap<LevelId, WindowRow>,
    /// Levels whose windows changed since they were last saved (only those are saved: with
    /// thousands of keys, a save covers the ones in use).
    dirty: HashSet<LevelId>,
    /// Per level: the spend and counts of the periods that have not ended.
    spend: HashMap<LevelId, Vec<PeriodUsage>>,
    next_id: u64,
}

/// What one level used in one budget period.
#[derive(Debug, Clone, Copy, Default)]
struct PeriodUsage {
    period: Period,
    start: i64,
    usd: f64,
    requests: u64,
    tokens: u64,
}

impl State {
    fn spent(&self, l: &Level, now_ms: i64) -> f64 {
        self.period_usage(l, now_ms).usd
    }

    /// The level's usage of its current period (zero when there is none yet).
    fn period_usage(&self, l: &Level, now_ms: i64) -> PeriodUsage {
        let start = l.limits.period.bounds(now_ms).0;
        self.spend
            .get(&(l.kind, l.name.clone()))
            .and_then(|v| {
                v.iter()
                    .find(|u| u.period == l.limits.period && u.start == start)
            })
            .copied()
            .unwrap_or_default()
    }

    /// Adds to one period, forgetting the level's finished periods of the same kind.
    fn add_spend(&mut self, kind: Kind, name: Arc<str>, add: PeriodUsage) {
        let periods = self.spend.entry((kind, name)).or_default();
        periods.retain(|u| u.period != add.period || u.start >= add.start);
        match periods
            .iter_mut()
            .find(|u| u.period == add.period && u.start == add.start)
        {
            Some(u) => {
                u.usd += add.usd;
                u.requests = u.requests.saturating_add(add.requests);
                u.tokens = u.tokens.saturating_add(add.tokens);
            }
            None => periods.push(add),
        }
    }
}

/// One process's counters: rpm/tpm/concurrency in memory, spend in memory and in SQLite.
pub(crate) struct Embedded {
    state: Mutex<State>,
    clock: Arc<dyn WallClock>,
    db: DbHandle,
}

impl Embedded {
    pub fn new(
        clock: Arc<dyn WallClock>,
        db: DbHandle,
        spend: Vec<SpendRow>,
        windows: Vec<WindowRow>,
    ) -> Embedded {
        let mut state = State::default();
        for w in windows {
            state.saved.insert((w.kind, Arc::from(w.name.as_str())), w);
        }
        for row in spend {
            let Ok(period) = Period::parse((row.period != "lifetime").then_some(row.period)) else {
                continue;
            };
            state.add_spend(
                row.kind,
                Arc::from(row.name.as_str()),
                PeriodUsage {
                    period,
                    start: row.period_start,
                    usd: row.usd,
                    requests: row.requests,
                    tokens: row.tokens,
                },
            );
        }
        Embedded {
            state: Mutex::new(state),
            clock,
            db,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough counters: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reserve(&self, levels: &[Level], tokens: u64, cost: f64) -> Result<Reservation, Refusal> {
        let now = self.clock.now_ms();
        let mut guard = self.lock();
        let st = &mut *guard;
        for l in levels {
            let id = (l.kind, l.name.clone());
            if !st.dirty.contains(&id) {
                st.dirty.insert(id.clone());
            }
            let saved = &mut st.saved;
            st.entities
                .entry(id)
                .or_insert_with_key(|id| Entity::resumed(saved.remove(id)))
                .sync(&l.limits, &self.clock, now);
        }
        // 1. budgets
        for l in levels {
            if let Some(budget) = l.limits.budget_usd {
                let spent = st.spent(l, now);
                let reserved = st
                    .entities
                    .get(&(l.kind, l.name.clone()))
                    .map_or(0.0, |e| e.reserved_usd);
                if budget_refuses(budget, spent, reserved, cost) {
                    return Err(budget_refusal(l, budget, spent, reserved, cost, now));
                }
            }
        }
        // 2. concurrency, 3. tokens
        for l in levels {
            let Some(e) = st.entities.get(&(l.kind, l.name.clone())) else {
                continue;
            };
            if let Some(max) = l.limits.max_concurrent {
                if e.in_flight >= max {
                    return Err(rate_limited(
                        l,
                        &format!("concurrency ({max} in flight)"),
                        Duration::from_secs(1),
                    ));
                }
            }
            if let Some(b) = &e.tpm {
                let need = tokens_to_take(&l.limits, tokens);
                if b.level < need as f64 {
                    return Err(rate_limited(
                        l,
                        &format!("tokens-per-minute ({})", b.cap),
                        b.wait_for(need),
                    ));
                }
            }
        }
        // 4. requests: GCRA, undone on the levels already charged if a later one refuses
        let mut charged: Vec<(RevertibleState, u64)> = Vec::new();
        for l in levels {
            let Some(rpm) = st
                .entities
                .get(&(l.kind, l.name.clone()))
                .and_then(|e| e.rpm.as_ref())
            else {
                continue;
            };
            let saved = rpm.state.0.load(Ordering::Acquire);
            if let Err(not_until) = rpm.limiter.check() {
                for (state, value) in charged {
                    state.0.store(value, Ordering::Release);
                }
                let wait =
                    not_until.wait_time_from(governor::clock::Clock::now(rpm.limiter.clock()));
                return Err(rate_limited(
                    l,
                    &format!("requests-per-minute ({})", rpm.limit),
                    wait.max(Duration::from_millis(1)),
                ));
            }
            charged.push((rpm.state.clone(), saved));
        }
        // 5. commit
        let mut taken = Vec::with_capacity(levels.len());
        for l in levels {
            let t = tokens_to_take(&l.limits, tokens);
            if let Some(e) = st.entities.get_mut(&(l.kind, l.name.clone())) {
                e.in_flight += 1;
                e.reserved_usd += cost;
                e.minute_requests += 1;
                if let Some(b) = &mut e.tpm {
                    b.level -= t as f64;
                }
            }
            taken.push(t);
        }
        st.next_id += 1;
        Ok(Reservation {
            id: st.next_id.to_string(),
            levels: levels.to_vec(),
            taken,
            cost,
        })
    }

    /// Hands the windows that changed to the database thread (Redis keeps its own).
    pub fn save_windows(&self) {
        self.db.save_windows(self.windows_to_save());
    }

    /// The rate-limit windows changed since the last call, to save; nothing when none did.
    pub fn windows_to_save(&self) -> Vec<WindowRow> {
        let now = self.clock.now_ms();
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.dirty.is_empty() {
            return Vec::new();
        }
        let dirty = std::mem::take(&mut st.dirty);
        dirty
            .iter()
            .filter_map(|id| Some((id, st.entities.get(id)?)))
            .filter(|(_, e)| e.rpm.is_some() || e.tpm.is_some() || e.minute_requests > 0)
            .map(|((kind, name), e)| WindowRow {
                kind: *kind,
                name: name.to_string(),
                rpm_tat_ns: e.rpm.as_ref().map_or(0, Rpm::tat_ns),
                tpm: e.tpm.map(|b| (b.level, b.last_ms)),
                minute: e.minute,
                minute_requests: e.minute_requests,
                minute_tokens: e.minute_tokens,
                saved_ms: now,
            })
            .collect()
    }

    /// Settles (`Some((tokens, cost))`) or releases (`None`) a reservation.
    fn finish(&self, r: &Reservation, actual: Option<(u64, f64)>) {
        let now = self.clock.now_ms();
        let mut rows = Vec::new();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            for (l, &taken) in r.levels.iter().zip(&r.taken) {
                let id = (l.kind, l.name.clone());
                if !st.dirty.contains(&id) {
                    st.dirty.insert(id);
                }
                if let Some(e) = st.entities.get_mut(&(l.kind, l.name.clone())) {
                    e.sync(&l.limits, &self.clock, now);
                    e.in_flight = e.in_flight.saturating_sub(1);
                    e.reserved_usd = if e.in_flight == 0 {
                        0.0
                    } else {
                        (e.reserved_usd - r.cost).max(0.0)
                    };
                    let used = actual.map_or(0, |(t, _)| t);
                    if let Some(b) = &mut e.tpm {
                        b.level = (b.level + taken as f64 - used as f64).min(b.cap as f64);
                    }
                    e.minute_tokens = e.minute_tokens.saturating_add(used);
                }
                // A settled request counts in its period, with its tokens and what it cost.
                if let Some((tokens, cost)) = actual {
                    let (start, end) = l.limits.period.bounds(now);
                    let cost = cost.max(0.0);
                    st.add_spend(
                        l.kind,
                        l.name.clone(),
                        PeriodUsage {
                            period: l.limits.period,
                            start,
                            usd: cost,
                            requests: 1,
                            tokens,
                        },
                    );
                    rows.push(SpendRow {
                        kind: l.kind,
                        name: l.name.to_string(),
                        period: l.limits.period.label(),
                        period_start: start,
                        period_end: end,
                        usd: cost,
                        requests: 1,
                        tokens,
                    });
                }
            }
        }
        self.db.add_spend(rows);
    }

    fn usage(&self, l: &Level) -> UsageView {
        let now = self.clock.now_ms();
        let mut guard = self.lock();
        let st = &mut *guard;
        let period = st.period_usage(l, now);
        let spend_usd = period.usd;
        let Some(e) = st.entities.get_mut(&(l.kind, l.name.clone())) else {
            return UsageView {
                spend_usd,
                requests_this_period: period.requests,
                tokens_this_period: period.tokens,
                tpm_available: l.limits.tpm.map(|t| t as i64),
                ..UsageView::default()
            };
        };
        e.sync(&l.limits, &self.clock, now);
        UsageView {
            spend_usd,
            requests_this_period: period.requests,
            tokens_this_period: period.tokens,
            reserved_usd: e.reserved_usd,
            in_flight: e.in_flight,
            requests_this_minute: e.minute_requests,
            tokens_this_minute: e.minute_tokens,
            tpm_available: e.tpm.map(|b| b.level.floor() as i64),
        }
    }
}

#[cfg(test)]
mod dollar_tests {
    use super::dollars;

    #[test]
    fn budgets_show_what_they_are() {
        assert_eq!(dollars(200.0), "200.00");
        assert_eq!(dollars(0.5), "0.50");
        assert_eq!(dollars(0.0001), "0.0001");
        assert_eq!(dollars(0.000001), "0.000001");
        assert_eq!(dollars(0.0), "0.00");
    }
}
