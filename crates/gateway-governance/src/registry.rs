//! The immutable snapshot of who exists: virtual keys (from the config file and from the admin
//! API), teams and customers, with every key's chain of levels resolved. Rebuilt on every change and
//! swapped in with arc-swap, so admission reads it with one atomic load.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::{Kind, Limits, LimitsSpec, Priority, ValidConfig};
use crate::db::StoredKey;
use crate::store::Level;

/// Where a virtual key was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `[[virtual_keys]]` in the configuration file.
    Config,
    /// `POST /admin/virtual-keys`.
    Api,
}

#[derive(Debug)]
pub(crate) struct KeyEntry {
    pub name: Arc<str>,
    pub digest: [u8; 32],
    /// The spec without its secret.
    pub spec: LimitsSpec,
    pub source: Source,
    pub created_ms: Option<i64>,
    pub updated_ms: Option<i64>,
    /// Key, then team, then customer; an error when a parent no longer exists.
    pub levels: Result<Vec<Level>, String>,
    /// The providers every level allows (`None`: every level allows all).
    pub providers: Option<Arc<[String]>>,
    pub priority: Priority,
}

#[derive(Default)]
pub(crate) struct Registry {
    pub config: Arc<ValidConfig>,
    pub api: Arc<BTreeMap<String, StoredKey>>,
    pub keys: BTreeMap<String, Arc<KeyEntry>>,
    pub by_digest: HashMap<[u8; 32], Arc<KeyEntry>>,
    pub teams: BTreeMap<String, (Level, Option<String>)>,
    pub customers: BTreeMap<String, Level>,
}

impl Registry {
    pub fn build(config: Arc<ValidConfig>, api: Arc<BTreeMap<String, StoredKey>>) -> Registry {
        let customers: BTreeMap<String, Level> = config
            .customers
            .iter()
            .map(|(name, (_, limits))| (name.clone(), level(Kind::Customer, name, limits)))
            .collect();
        let teams: BTreeMap<String, (Level, Option<String>)> = config
            .teams
            .iter()
            .map(|(name, (spec, limits))| {
                (
                    name.clone(),
                    (level(Kind::Team, name, limits), spec.customer.clone()),
                )
            })
            .collect();
        let mut reg = Registry {
            config: config.clone(),
            api: api.clone(),
            teams,
            customers,
            ..Registry::default()
        };
        for k in &config.keys {
            let mut spec = k.spec.clone();
            spec.secret = None;
            reg.insert(spec, k.digest, k.limits.clone(), Source::Config, None, None);
        }
        for k in api.values() {
            if reg.keys.contains_key(&k.spec.name) {
                tracing::warn!(key = %k.spec.name, "a virtual key made through the admin API is shadowed by the configuration file's key of the same name");
                continue;
            }
            let mut problems = Vec::new();
            let limits = Limits::from_spec(&k.spec, Kind::Key, "virtual_key", &mut problems);
            if !problems.is_empty() {
                tracing::error!(key = %k.spec.name, ?problems, "stored virtual key is invalid; skipped");
                continue;
            }
            reg.insert(
                k.spec.clone(),
                k.digest,
                limits,
                Source::Api,
                Some(k.created_ms),
                Some(k.updated_ms),
            );
        }
        reg
    }

    fn insert(
        &mut self,
        spec: LimitsSpec,
        digest: [u8; 32],
        limits: Limits,
        source: Source,
        created_ms: Option<i64>,
        updated_ms: Option<i64>,
    ) {
        if self.by_digest.contains_key(&digest) {
            tracing::error!(key = %spec.name, "virtual key shares its secret with another key; skipped");
            return;
        }
        let key_level = level(Kind::Key, &spec.name, &limits);
        let mut priority = limits.priority;
        let mut levels = vec![key_level];
        let mut problem = None;
        let mut customer = spec.customer.clone();
        if let Some(t) = &spec.team {
            match self.teams.get(t) {
                Some((team, team_customer)) => {
                    priority = priority.or(team.limits.priority);
                    levels.push(team.clone());
                    customer = team_customer.clone();
                }
                None => {
                    problem = Some(format!(
                        "virtual key '{}' belongs to team '{t}', which no longer exists",
                        spec.name
                    ))
                }
            }
        }
        if let Some(c) = &customer {
            match self.customers.get(c) {
                Some(cust) => {
                    priority = priority.or(cust.limits.priority);
                    levels.push(cust.clone());
                }
                None => {
                    problem = Some(format!(
                        "virtual key '{}' belongs to customer '{c}', which no longer exists",
                        spec.name
                    ))
                }
            }
        }
        let providers = allowed_providers(&levels);
        let entry = Arc::new(KeyEntry {
            name: Arc::from(spec.name.as_str()),
            digest,
            providers,
            levels: match problem {
                Some(p) => Err(p),
                None => Ok(levels),
            },
            priority: priority.unwrap_or_default(),
            spec,
            source,
            created_ms,
            updated_ms,
        });
        self.by_digest.insert(digest, entry.clone());
        self.keys.insert(entry.spec.name.clone(), entry);
    }
}

/// The providers allowed at every level: the intersection of the levels' `providers` lists (a
/// level without a list, or whose list holds `*`, allows all). Names compare case-insensitively;
/// the key's own spelling is kept. `Some` of an empty list when the levels' lists do not meet.
pub(crate) fn allowed_providers(levels: &[Level]) -> Option<Arc<[String]>> {
    let mut allowed: Option<Vec<String>> = None;
    for l in levels {
        let Some(list) = &l.limits.providers else {
            continue;
        };
        if list.iter().any(|e| e == "*") {
            continue;
        }
        allowed = Some(match allowed {
            None => list.clone(),
            Some(mut so_far) => {
                so_far.retain(|p| list.iter().any(|e| e.eq_ignore_ascii_case(p)));
                so_far
            }
        });
    }
    allowed.map(Arc::from)
}

fn level(kind: Kind, name: &str, limits: &Limits) -> Level {
    Level {
        kind,
        name: Arc::from(name),
        limits: Arc::new(limits.clone()),
    }
}
