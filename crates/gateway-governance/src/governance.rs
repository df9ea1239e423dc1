//! [`Governance`]: the `Admission`, `Pricing` and `AdminRoutes` implementation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use gateway_core::admission::{Admission, AdmissionRequest, Permit, Refusal};
use gateway_core::extend::Pricing;
use gateway_core::types::Usage;

use crate::clock::{SystemClock, WallClock};
use crate::config::{GovernanceConfig, Priority, DB_FILE};
use crate::db::{self, DbHandle, StoredKey};
use crate::error::GovernanceError;
use crate::keys::{digests_equal, hash_secret};
use crate::pricing::PriceTable;
use crate::redis_store::{RedisStore, KEY_REFRESH};
use crate::registry::{KeyEntry, Registry};
use crate::store::{Counters, Embedded, Reservation};

/// How often the embedded store saves rate-limit windows that changed.
const WINDOW_SAVE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a batch key is told to wait when capacity is short.
pub const BATCH_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Virtual keys, hierarchical limits and budgets, pricing, and their admin API.
///
/// Build it with [`Governance::open`], hand it to the server as its `Admission`, `Pricing` and
/// `AdminRoutes`, and call [`Governance::reload`] when the configuration file changes.
pub struct Governance {
    pub(crate) registry: ArcSwap<Registry>,
    pub(crate) pricing: ArcSwap<PriceTable>,
    pub(crate) counters: Counters,
    pub(crate) db: DbHandle,
    pub(crate) clock: Arc<dyn WallClock>,
    batch_headroom: AtomicU64,
    /// `default_output_tokens`: output reserved for a request without an output limit.
    default_output: AtomicU64,
    store: Option<String>,
    keys_version: AtomicU64,
    /// A key was made through the admin API in this store at some point: virtual keys stay
    /// required after the last one is deleted (a revoked secret must not start working again
    /// because it was the last key).
    api_keys_made: AtomicBool,
}

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governance")
            .field("virtual_keys", &self.registry.load().keys.len())
            .field("store", &self.store.as_deref().unwrap_or("embedded"))
            .finish_non_exhaustive()
    }
}

impl Governance {
    /// Validates `config`, opens (or creates) `data_dir/governance.sqlite3`, connects to Redis when
    /// `store` is set, and loads the keys made through the admin API.
    pub async fn open(config: GovernanceConfig) -> Result<Arc<Governance>, GovernanceError> {
        Self::open_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Governance::open`] with an injected wall clock (tests move a
    /// [`crate::clock::ManualClock`] instead of sleeping).
    pub async fn open_with_clock(
        config: GovernanceConfig,
        clock: Arc<dyn WallClock>,
    ) -> Result<Arc<Governance>, GovernanceError> {
        let valid = Arc::new(config.validated()?);
        let dir = config.data_dir.clone();
        let now = clock.now_ms();
        let (conn, loaded) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|source| GovernanceError::DataDir {
                path: dir.clone(),
                source,
            })?;
            db::open(&dir.join(DB_FILE), now)
        })
        .await
        .map_err(|e| GovernanceError::DataDir {
            path: config.data_dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })??;
        let db = db::spawn(conn)?;
        let counters = match &config.store {
            Some(url) => Counters::Redis(RedisStore::connect(url, clock.clone()).await?),
            None => Counters::Embedded(Arc::new(Embedded::new(
                clock.clone(),
                db.clone(),
                loaded.spend,
                loaded.windows,
            ))),
        };
        let (keys_version, api_keys) = match &counters {
            Counters::Redis(r) => r.load_keys().await.map_err(GovernanceError::Store)?,
            Counters::Embedded(_) => (0, loaded.keys),
        };
        // Redis bumps its key-set version on every change made through the API.
        let api_keys_made = loaded.api_keys_made || keys_version > 0;
        let api: BTreeMap<_, _> = api_keys
            .into_iter()
            .map(|k| (k.spec.name.clone(), k))
            .collect();
        let registry = Registry::build(valid.clone(), Arc::new(api));
        tracing::info!(
            virtual_keys = registry.keys.len(),
            teams = registry.teams.len(),
            customers = registry.customers.len(),
            store = %config
                .store
                .as_deref()
                .map_or_else(|| "embedded".to_owned(), gateway_core::observe::redact_url),
            "governance ready"
        );
        let gov = Arc::new(Governance {
            registry: ArcSwap::from_pointee(registry),
            pricing: ArcSwap::from_pointee(PriceTable::with_overrides(&valid.pricing)),
            counters,
            db,
            clock,
            batch_headroom: AtomicU64::new(valid.batch_headroom.to_bits()),
            default_output: AtomicU64::new(valid.default_output_tokens),
            store: config.store.clone(),
            keys_version: AtomicU64::new(keys_version),
            api_keys_made: AtomicBool::new(api_keys_made),
        });
        if let Counters::Embedded(e) = &gov.counters {
            // Rate-limit windows are saved every second while they change (and at shutdown by
            // `flush`), so a restart within the minute does not hand out a fresh burst.
            let weak = Arc::downgrade(e);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(WINDOW_SAVE);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(e) = weak.upgrade() else { break };
                    e.save_windows();
                }
            });
        }
        if matches!(gov.counters, Counters::Redis(_)) {
            let weak = Arc::downgrade(&gov);
            tokio::spawn(async move {
                // The keys were just loaded: the first refresh is one period away.
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + KEY_REFRESH,
                    KEY_REFRESH,
                );
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(gov) = weak.upgrade() else { break };
                    if let Err(e) = gov.refresh_keys().await {
                        tracing::warn!(error = %e, "could not refresh virtual keys from Redis");
                    }
                }
            });
        }
        Ok(gov)
    }

    /// With the Redis store, reloads the API-made virtual keys if another instance changed them
    /// (this runs every [`KEY_REFRESH`] on its own); with the embedded store, does nothing.
    pub async fn refresh_keys(&self) -> Result<(), GovernanceError> {
        let Counters::Redis(r) = &self.counters else {
            return Ok(());
        };
        let version = r.keys_version().await.map_err(GovernanceError::Store)?;
        if version == self.keys_version.load(Ordering::Acquire) {
            return Ok(());
        }
        let (version, keys) = r.load_keys().await.map_err(GovernanceError::Store)?;
        let api: Arc<BTreeMap<_, _>> =
            Arc::new(keys.into_iter().map(|k| (k.spec.name.clone(), k)).collect());
        self.registry
            .rcu(|current| Registry::build(current.config.clone(), api.clone()));
        self.keys_version.store(version, Ordering::Release);
        if version > 0 {
            self.api_keys_made.store(true, Ordering::Release);
        }
        Ok(())
    }

    pub(crate) async fn store_insert_key(&self, k: StoredKey) -> Result<(), String> {
        match &self.counters {
            Counters::Redis(r) => r.insert_key(&k).await,
            Counters::Embedded(_) => self.db.insert_key(k).await,
        }?;
        self.api_keys_made.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) async fn store_update_key(&self, k: StoredKey) -> Result<(), String> {
        match &self.counters {
            Counters::Redis(r) => r.update_key(&k).await,
            Counters::Embedded(_) => self.db.update_key(k).await,
        }
    }

    pub(crate) async fn store_delete_key(&self, name: &str) -> Result<(), String> {
        match &self.counters {
            Counters::Redis(r) => r.delete_key(name).await,
            Counters::Embedded(_) => self.db.delete_key(name.to_string()).await,
        }
    }

    /// Applies a new configuration: the file's keys, teams, customers, prices and batch headroom
    /// replace the old ones; keys made through the admin API and all usage are kept. `store` and
    /// `data_dir` only change with a restart.
    pub fn reload(&self, config: &GovernanceConfig) -> Result<(), GovernanceError> {
        let valid = Arc::new(config.validated()?);
        if config.store != self.store {
            tracing::warn!("governance.store changed: restart the gateway to switch stores");
        }
        self.registry
            .rcu(|current| Registry::build(valid.clone(), current.api.clone()));
        self.pricing
            .store(Arc::new(PriceTable::with_overrides(&valid.pricing)));
        self.batch_headroom
            .store(valid.batch_headroom.to_bits(), Ordering::Relaxed);
        self.default_output
            .store(valid.default_output_tokens, Ordering::Relaxed);
        Ok(())
    }

    /// Waits until settled spend and key changes queued so far are stored (SQLite committed,
    /// Redis settlements applied). For graceful shutdown and tests.
    pub async fn flush(&self) -> Result<(), GovernanceError> {
        self.counters.flush().await;
        self.db
            .flush()
            .await
            .map_err(|_| GovernanceError::WriterGone)
    }

    /// The current price table.
    pub fn prices(&self) -> Arc<PriceTable> {
        self.pricing.load_full()
    }

    /// Whether virtual keys are required: some exist, or one was made through the admin API in
    /// this store at some point (deleting the last key does not open the gateway). When not,
    /// every request is admitted.
    pub fn has_virtual_keys(&self) -> bool {
        self.api_keys_made.load(Ordering::Acquire) || !self.registry.load().keys.is_empty()
    }

    fn batch_headroom(&self) -> f64 {
        f64::from_bits(self.batch_headroom.load(Ordering::Relaxed))
    }
}

/// The permit of an admitted request.
struct GovernedPermit {
    key: Option<Arc<str>>,
    providers: Option<Arc<[String]>>,
    batch: bool,
    reservation: Option<Reservation>,
    counters: Counters,
}

impl Permit for GovernedPermit {
    fn virtual_key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    fn is_batch(&self) -> bool {
        self.batch
    }

    fn allowed_providers(&self) -> Option<&[String]> {
        self.providers.as_deref()
    }

    fn settle(mut self: Box<Self>, usage: &Usage, cost_usd: f64) {
        if let Some(r) = self.reservation.take() {
            let tokens = usage
                .total_tokens
                .max(usage.prompt_tokens.saturating_add(usage.completion_tokens));
            let cost = if cost_usd.is_finite() {
                cost_usd.max(0.0)
            } else {
                0.0
            };
            self.counters.settle(r, tokens, cost);
        }
    }
}

impl Drop for GovernedPermit {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.counters.release(r);
        }
    }
}

#[async_trait]
impl Admission for Governance {
    fn enabled(&self) -> bool {
        self.has_virtual_keys()
    }

    fn key_name(&self, presented_key: Option<&str>) -> Option<String> {
        let presented = presented_key.map(str::trim).filter(|k| !k.is_empty())?;
        let digest = hash_secret(presented);
        let registry = self.registry.load();
        registry
            .by_digest
            .get(&digest)
            .filter(|e| digests_equal(&e.digest, &digest))
            .map(|e| e.name.to_string())
    }

    async fn admit(&self, request: &AdmissionRequest<'_>) -> Result<Box<dyn Permit>, Refusal> {
        let registry = self.registry.load_full();
        let Some(entry) = check(&registry, self.has_virtual_keys(), request)? else {
            return Ok(Box::new(GovernedPermit {
                key: None,
                providers: None,
                batch: false,
                reservation: None,
                counters: self.counters.clone(),
            }));
        };
        let levels = entry
            .levels
            .as_ref()
            .map_err(|e| Refusal::Forbidden(e.clone()))?;
        let batch = entry.priority == Priority::Batch;
        let floor = self.batch_headroom();
        if batch && request.headroom < floor {
            return Err(Refusal::RateLimited {
                message: format!(
                    "capacity for '{}' is short (headroom {:.2} < {floor:.2}): batch key '{}' yields to interactive traffic",
                    request.model, request.headroom, entry.name
                ),
                retry_after: BATCH_RETRY_AFTER,
            });
        }
        let output = if request.max_output_tokens == 0 {
            self.default_output.load(Ordering::Relaxed)
        } else {
            request.max_output_tokens
        };
        let tokens = request.estimated_input_tokens.saturating_add(output);
        let prices = self.pricing.load();
        let estimate =
            |p: crate::pricing::Price| p.cost_of(request.estimated_input_tokens, 0, output);
        // The dearest target (`provider/model` finds a provider-scoped price, else the model's).
        let cost = request
            .targets
            .iter()
            .filter_map(|(p, m)| prices.lookup(&format!("{p}/{m}")).map(estimate))
            .fold(None, |max: Option<f64>, c| {
                Some(max.map_or(c, |m| m.max(c)))
            })
            .or_else(|| prices.lookup(request.model).map(estimate))
            .unwrap_or(0.0);
        let reservation = self.counters.reserve(levels, tokens, cost).await?;
        Ok(Box::new(GovernedPermit {
            key: Some(entry.name.clone()),
            providers: entry.providers.clone(),
            batch,
            reservation: Some(reservation),
            counters: self.counters.clone(),
        }))
    }

    fn authorize(&self, request: &AdmissionRequest<'_>) -> Result<Option<Vec<String>>, Refusal> {
        let registry = self.registry.load();
        Ok(check(&registry, self.has_virtual_keys(), request)?
            .and_then(|e| e.providers.as_deref().map(<[String]>::to_vec)))
    }
}

/// Who is calling and whether they may use `request.model` through `request.providers`: the
/// key's entry, or `None` when virtual keys are not required (everything is open).
fn check<'r>(
    registry: &'r Registry,
    required: bool,
    request: &AdmissionRequest<'_>,
) -> Result<Option<&'r Arc<KeyEntry>>, Refusal> {
    if !required {
        return Ok(None);
    }
    let presented = request
        .presented_key
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            Refusal::Unauthorized(
                "a virtual key is required: send Authorization: Bearer <key> or x-api-key: <key>"
                    .into(),
            )
        })?;
    let digest = hash_secret(presented);
    let entry = registry
        .by_digest
        .get(&digest)
        .filter(|e| digests_equal(&e.digest, &digest))
        .ok_or_else(|| Refusal::Unauthorized("unknown virtual key".into()))?;
    let levels = entry
        .levels
        .as_ref()
        .map_err(|e| Refusal::Forbidden(e.clone()))?;
    for l in levels {
        if !l
            .limits
            .allows_model_served(request.model, request.providers)
        {
            return Err(Refusal::Forbidden(format!(
                "model '{}' is not allowed for {} '{}'",
                request.model,
                l.kind.noun(),
                l.name
            )));
        }
    }
    // A model no provider serves is left to the engine (404, not 403).
    if request.providers.is_empty() {
        return Ok(Some(entry));
    }
    for l in levels {
        if !l.limits.allows_any_provider(request.providers) {
            return Err(Refusal::Forbidden(format!(
                "no provider allowed for {} '{}' serves model '{}' (allowed: {}; serving: {})",
                l.kind.noun(),
                l.name,
                request.model,
                l.limits.providers.as_deref().unwrap_or_default().join(", "),
                request.providers.join(", ")
            )));
        }
    }
    // Each level may allow a serving provider and still none be allowed by all of them.
    if let Some(allowed) = &entry.providers {
        let reachable = request
            .providers
            .iter()
            .any(|p| allowed.iter().any(|a| a.eq_ignore_ascii_case(p)));
        if !reachable {
            return Err(Refusal::Forbidden(format!(
                "no provider allowed at every level of virtual key '{}' serves model '{}' (allowed by all: {}; serving: {})",
                entry.name,
                request.model,
                if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") },
                request.providers.join(", ")
            )));
        }
    }
    Ok(Some(entry))
}

impl Pricing for Governance {
    fn cost(&self, provider: &str, model: &str, usage: &Usage) -> f64 {
        self.pricing.load().cost(provider, model, usage)
    }
}
