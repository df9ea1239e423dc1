//! Configuration: the `[[virtual_keys]]`, `[[teams]]`, `[[customers]]`, `[[pricing]]` and
//! `[governance]` sections, and their validation.
//!
//! Validation collects every problem, each naming its field (`virtual_keys[2].budget_period: ...`),
//! so one run of the gateway shows all of them.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::GovernanceError;
use crate::period::Period;

/// Limits of one virtual key, team or customer (one `[[virtual_keys]]`, `[[teams]]` or
/// `[[customers]]` table; also the body of `POST /admin/virtual-keys`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Unique name within its kind.
    pub name: String,
    /// Virtual keys only: the secret clients present, or `sha256:<64 hex>` of it.
    #[serde(default)]
    pub secret: Option<String>,
    /// Virtual keys only: the team the key belongs to.
    #[serde(default)]
    pub team: Option<String>,
    /// Teams: the customer the team belongs to (a virtual key without a team may name one too).
    #[serde(default)]
    pub customer: Option<String>,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens (input + output) per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[serde(default)]
    pub max_concurrent: Option<u64>,
    /// Budget in USD.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// `1h`, `1d`, `1w` or `1M`; none for a lifetime cap.
    #[serde(default)]
    pub budget_period: Option<String>,
    /// Allowed models (route names, `provider/model`, `provider/*` or `*`); none allows all.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Allowed providers (configured provider names); none allows all.
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    /// `interactive` (the default) or `batch`.
    #[serde(default)]
    pub priority: Option<String>,
}

/// One `[[pricing]]` entry: overrides or extends the built-in price table.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PricingSpec {
    /// Model id (upstream id, or `provider/model` to price one provider's deployment).
    pub model: String,
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
    /// USD per million cached input tokens (the input rate when unset).
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
}

/// The `[governance]` table.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GovernanceSection {
    /// `redis://host:port` to share counters across instances; embedded SQLite when unset.
    #[serde(default)]
    pub store: Option<String>,
    /// Directory of the embedded SQLite database.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Below this balancer headroom (0..1) batch keys are held back; default 0.2.
    #[serde(default)]
    pub batch_headroom: Option<f64>,
    /// Output tokens reserved for a request that sets no output limit; default 4096.
    #[serde(default)]
    pub default_output_tokens: Option<u64>,
}

/// Everything governance needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GovernanceConfig {
    /// `[[virtual_keys]]`.
    pub virtual_keys: Vec<LimitsSpec>,
    /// `[[teams]]`.
    pub teams: Vec<LimitsSpec>,
    /// `[[customers]]`.
    pub customers: Vec<LimitsSpec>,
    /// `[[pricing]]`.
    pub pricing: Vec<PricingSpec>,
    /// `redis://host:port` for the shared store; embedded when `None`.
    pub store: Option<String>,
    /// Directory of the SQLite database (`governance.sqlite3`); created if missing.
    pub data_dir: PathBuf,
    /// Headroom below which batch keys are refused; [`DEFAULT_BATCH_HEADROOM`] when `None`.
    pub batch_headroom: Option<f64>,
    /// Output tokens reserved (tpm and budget) for a request that sets no output limit;
    /// [`DEFAULT_OUTPUT_TOKENS`] when `None`.
    pub default_output_tokens: Option<u64>,
}

/// The default `default_output_tokens`: the output a request without a limit is assumed to
/// reach, until settlement corrects it.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 4096;

/// The default `batch_headroom`.
pub const DEFAULT_BATCH_HEADROOM: f64 = 0.2;

/// The SQLite file inside `data_dir`.
pub const DB_FILE: &str = "governance.sqlite3";

/// Which level of the hierarchy a limit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A virtual key.
    Key,
    /// A team of keys.
    Team,
    /// A customer of teams.
    Customer,
}

impl Kind {
    /// `key`, `team` or `customer`, as used in storage keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::Team => "team",
            Kind::Customer => "customer",
        }
    }

    /// For messages: `virtual key`, `team`, `customer`.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Key => "virtual key",
            Kind::Team => "team",
            Kind::Customer => "customer",
        }
    }

    pub(crate) fn section(self) -> &'static str {
        match self {
            Kind::Key => "virtual_keys",
            Kind::Team => "teams",
            Kind::Customer => "customers",
        }
    }
}

/// Scheduling class of a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Served whenever capacity exists (the default).
    #[default]
    Interactive,
    /// Held back when the balancer's headroom is short.
    Batch,
}

/// Validated limits of one level.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub max_concurrent: Option<u64>,
    /// Budget in USD.
    pub budget_usd: Option<f64>,
    /// The budget's period.
    pub period: Period,
    /// Allowed models, lower-cased.
    pub models: Option<Vec<String>>,
    /// Allowed providers, lower-cased.
    pub providers: Option<Vec<String>>,
    /// Priority, if set at this level.
    pub priority: Option<Priority>,
}

impl Limits {
    /// Validates `spec`, pushing one message per problem prefixed with `at` (`virtual_keys[2]`).
    pub(crate) fn from_spec(
        spec: &LimitsSpec,
        kind: Kind,
        at: &str,
        problems: &mut Vec<String>,
    ) -> Limits {
        let mut limits = Limits::default();
        if let Err(e) = check_name(&spec.name) {
            problems.push(format!("{at}.name: {e}"));
        }
        match kind {
            Kind::Key => {
                if spec.team.is_some() && spec.customer.is_some() {
                    problems.push(format!(
                        "{at}.customer: a key with a team gets its customer from the team; set one of team or customer"
                    ));
                }
            }
            Kind::Team => {
                if spec.team.is_some() {
                    problems.push(format!("{at}.team: only virtual keys belong to a team"));
                }
                if spec.secret.is_some() {
                    problems.push(format!("{at}.secret: only virtual keys have a secret"));
                }
            }
            Kind::Customer => {
                if spec.team.is_some() {
                    problems.push(format!("{at}.team: only virtual keys belong to a team"));
                }
                if spec.customer.is_some() {
                    problems.push(format!(
                        "{at}.customer: only teams and keys belong to a customer"
                    ));
                }
                if spec.secret.is_some() {
                    problems.push(format!("{at}.secret: only virtual keys have a secret"));
                }
            }
        }
        for (field, value) in [
            ("rpm", spec.rpm),
            ("tpm", spec.tpm),
            ("max_concurrent", spec.max_concurrent),
        ] {
            if value == Some(0) {
                problems.push(format!(
                    "{at}.{field}: must be at least 1 (leave it out for no limit)"
                ));
            }
        }
        limits.rpm = match spec.rpm {
            Some(v) if v > u64::from(u32::MAX) => {
                problems.push(format!("{at}.rpm: {v} is too large (at most {})", u32::MAX));
                None
            }
            Some(v) => u32::try_from(v).ok().filter(|v| *v > 0),
            None => None,
        };
        limits.tpm = spec.tpm.filter(|v| *v > 0);
        limits.max_concurrent = spec.max_concurrent.filter(|v| *v > 0);
        if let Some(b) = spec.budget_usd {
            if !b.is_finite() || b < 0.0 {
                problems.push(format!(
                    "{at}.budget_usd: must be a non-negative number of dollars, got {b}"
                ));
            } else {
                limits.budget_usd = Some(b);
            }
        }
        match Period::parse(spec.budget_period.as_deref()) {
            Ok(p) => {
                if spec.budget_usd.is_none() && spec.budget_period.is_some() {
                    problems.push(format!("{at}.budget_period: set budget_usd too (a period without a budget limits nothing)"));
                }
                limits.period = p;
            }
            Err(e) => problems.push(format!("{at}.budget_period: {e}")),
        }
        limits.models = list(&spec.models, &format!("{at}.models"), problems);
        limits.providers = list(&spec.providers, &format!("{at}.providers"), problems);
        limits.priority = match spec.priority.as_deref().map(str::trim) {
            None => None,
            Some("interactive") => Some(Priority::Interactive),
            Some("batch") => Some(Priority::Batch),
            Some(other) => {
                problems.push(format!(
                    "{at}.priority: unknown priority {other:?}: use interactive or batch"
                ));
                None
            }
        };
        limits
    }

    /// Whether the allow-list admits `model` (always when there is no list).
    ///
    /// An entry matches the same name (case-insensitive), `*` matches everything, `provider/*`
    /// matches every `provider/...` model, and a bare model name also matches `provider/<name>`.
    pub fn allows_model(&self, model: &str) -> bool {
        let Some(list) = &self.models else {
            return true;
        };
        let model = model.to_ascii_lowercase();
        let bare = model.split_once('/').map(|(_, m)| m);
        list.iter().any(|entry| {
            entry == "*"
                || *entry == model
                || entry
                    .strip_suffix("/*")
                    .is_some_and(|p| model.split_once('/').is_some_and(|(mp, _)| mp == p))
                || (!entry.contains('/') && bare == Some(entry.as_str()))
        })
    }

    /// [`Limits::allows_model`], or a name every provider serving it covers with `provider/*`:
    /// `ant/*` admits the bare `claude-3-5-haiku-latest` when only `ant` serves it.
    pub fn allows_model_served(&self, model: &str, serving: &[&str]) -> bool {
        if self.allows_model(model) {
            return true;
        }
        let Some(list) = &self.models else {
            return true;
        };
        // A model addressed through its provider (`p/model`) was judged by `allows_model`.
        let direct = model
            .split_once('/')
            .is_some_and(|(p, _)| serving.iter().any(|s| s.eq_ignore_ascii_case(p)));
        !direct
            && !serving.is_empty()
            && serving.iter().all(|p| {
                list.iter().any(|entry| {
                    entry
                        .strip_suffix("/*")
                        .is_some_and(|ep| ep.eq_ignore_ascii_case(p))
                })
            })
    }

    /// Whether the allow-list admits at least one of `providers` (always when there is no list).
    pub fn allows_any_provider(&self, providers: &[&str]) -> bool {
        let Some(list) = &self.providers else {
            return true;
        };
        providers.iter().any(|p| {
            list.iter()
                .any(|entry| entry == "*" || entry.eq_ignore_ascii_case(p))
        })
    }
}

fn list(value: &Option<Vec<String>>, at: &str, problems: &mut Vec<String>) -> Option<Vec<String>> {
    let v = value.as_ref()?;
    if v.is_empty() {
        problems.push(format!(
            "{at}: an empty list allows nothing; leave it out to allow everything"
        ));
    }
    for (i, entry) in v.iter().enumerate() {
        if entry.trim().is_empty() {
            problems.push(format!("{at}[{i}]: empty name"));
        }
    }
    Some(v.iter().map(|e| e.trim().to_ascii_lowercase()).collect())
}

/// Names are used in admin URLs and storage keys: letters, digits, `-`, `_`, `.`, `@`, 1 to 128.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 128 {
        return Err(format!("{name:?} is longer than 128 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')))
    {
        return Err(format!(
            "{name:?} contains {c:?}: use letters, digits, '-', '_', '.' or '@'"
        ));
    }
    Ok(())
}

/// Parses a configured secret: plaintext, or `sha256:<64 hex>` of it. Returns the digest.
pub(crate) fn secret_digest(secret: &str) -> Result<[u8; 32], String> {
    if let Some(hexed) = secret.strip_prefix("sha256:") {
        let bytes = hex::decode(hexed.trim())
            .map_err(|_| "sha256: must be followed by 64 hex digits".to_string())?;
        return <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| "sha256: must be followed by 64 hex digits".to_string());
    }
    if secret.is_empty() {
        return Err("must not be empty".into());
    }
    if secret.len() < 16 {
        // Allowed (test fixtures, local setups), but worth a line in the log.
        tracing::warn!(
            length = secret.len(),
            "a virtual key secret shorter than 16 characters is easy to guess"
        );
    }
    Ok(crate::keys::hash_secret(secret))
}

/// A validated key from the configuration file.
#[derive(Debug, Clone)]
pub(crate) struct ConfigKey {
    pub spec: LimitsSpec,
    pub digest: [u8; 32],
    pub limits: Limits,
}

/// The validated configuration part of the registry.
#[derive(Debug, Clone, Default)]
pub(crate) struct ValidConfig {
    pub keys: Vec<ConfigKey>,
    /// Team name -> (limits, customer).
    pub teams: HashMap<String, (LimitsSpec, Limits)>,
    pub customers: HashMap<String, (LimitsSpec, Limits)>,
    pub pricing: Vec<PricingSpec>,
    pub batch_headroom: f64,
    pub default_output_tokens: u64,
}

impl GovernanceConfig {
    /// Builds the configuration from the server's sections.
    pub fn from_sections(
        section: GovernanceSection,
        virtual_keys: Vec<LimitsSpec>,
        teams: Vec<LimitsSpec>,
        customers: Vec<LimitsSpec>,
        pricing: Vec<PricingSpec>,
        default_data_dir: PathBuf,
    ) -> GovernanceConfig {
        GovernanceConfig {
            virtual_keys,
            teams,
            customers,
            pricing,
            store: section.store,
            data_dir: section.data_dir.unwrap_or(default_data_dir),
            batch_headroom: section.batch_headroom,
            default_output_tokens: section.default_output_tokens,
        }
    }

    /// Checks everything, returning every problem at once.
    pub fn validate(&self) -> Result<(), GovernanceError> {
        self.validated().map(|_| ())
    }

    pub(crate) fn validated(&self) -> Result<ValidConfig, GovernanceError> {
        let mut problems = Vec::new();
        let mut out = ValidConfig {
            batch_headroom: DEFAULT_BATCH_HEADROOM,
            default_output_tokens: DEFAULT_OUTPUT_TOKENS,
            ..ValidConfig::default()
        };
        for (i, spec) in self.customers.iter().enumerate() {
            let at = format!("customers[{i}]");
            let limits = Limits::from_spec(spec, Kind::Customer, &at, &mut problems);
            if out
                .customers
                .insert(spec.name.clone(), (spec.clone(), limits))
                .is_some()
            {
                problems.push(format!("{at}.name: duplicate customer {:?}", spec.name));
            }
        }
        for (i, spec) in self.teams.iter().enumerate() {
            let at = format!("teams[{i}]");
            let limits = Limits::from_spec(spec, Kind::Team, &at, &mut problems);
            if let Some(c) = &spec.customer {
                // Named without a section of its own: a customer without limits (see below).
                without_limits(&mut out.customers, c);
            }
            if out
                .teams
                .insert(spec.name.clone(), (spec.clone(), limits))
                .is_some()
            {
                problems.push(format!("{at}.name: duplicate team {:?}", spec.name));
            }
        }
        // A team or customer that keys (or teams) name without a section of its own exists
        // without limits of its own: it groups them (`team = "data"` alone is valid, as the
        // configuration's reference example has it).
        for k in &self.virtual_keys {
            if let Some(t) = &k.team {
                without_limits(&mut out.teams, t);
            }
            if let Some(c) = &k.customer {
                without_limits(&mut out.customers, c);
            }
        }
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        for (i, spec) in self.virtual_keys.iter().enumerate() {
            let at = format!("virtual_keys[{i}]");
            let limits = Limits::from_spec(spec, Kind::Key, &at, &mut problems);
            check_parents(spec, &out, &at, &mut problems);
            if !names.insert(spec.name.clone()) {
                problems.push(format!("{at}.name: duplicate virtual key {:?}", spec.name));
            }
            let digest = match spec.secret.as_deref() {
                None => {
                    problems.push(format!(
                        "{at}.secret: missing (the secret clients present, or sha256:<hex> of it)"
                    ));
                    continue;
                }
                Some(s) => match secret_digest(s) {
                    Ok(d) => d,
                    Err(e) => {
                        problems.push(format!("{at}.secret: {e}"));
                        continue;
                    }
                },
            };
            if !digests.insert(digest) {
                problems.push(format!(
                    "{at}.secret: the same secret as another virtual key"
                ));
            }
            out.keys.push(ConfigKey {
                spec: spec.clone(),
                digest,
                limits,
            });
        }
        let mut models = HashSet::new();
        for (i, p) in self.pricing.iter().enumerate() {
            let at = format!("pricing[{i}]");
            if p.model.trim().is_empty() {
                problems.push(format!("{at}.model: must not be empty"));
            }
            if !models.insert(p.model.trim().to_ascii_lowercase()) {
                problems.push(format!("{at}.model: duplicate price for {:?}", p.model));
            }
            for (field, v) in [
                ("input_per_mtok", Some(p.input_per_mtok)),
                ("output_per_mtok", Some(p.output_per_mtok)),
                ("cached_input_per_mtok", p.cached_input_per_mtok),
            ] {
                if let Some(v) = v {
                    if !v.is_finite() || v < 0.0 {
                        problems.push(format!(
                            "{at}.{field}: must be a non-negative number, got {v}"
                        ));
                    }
                }
            }
        }
        out.pricing = self.pricing.clone();
        if let Some(h) = self.batch_headroom {
            if !(0.0..=1.0).contains(&h) {
                problems.push(format!(
                    "governance.batch_headroom: must be between 0 and 1, got {h}"
                ));
            } else {
                out.batch_headroom = h;
            }
        }
        match self.default_output_tokens {
            Some(0) => {
                problems.push("governance.default_output_tokens: must be at least 1".to_owned())
            }
            Some(n) => out.default_output_tokens = n,
            None => {}
        }
        if let Some(store) = &self.store {
            if !(store.starts_with("redis://")
                || store.starts_with("rediss://")
                || store.starts_with("redis+unix://"))
            {
                problems.push(format!("governance.store: {store:?} is not a redis:// URL (leave it out for the embedded store)"));
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(GovernanceError::Config(problems))
        }
    }
}

/// A level named by another without a section of its own: added, without limits.
fn without_limits(levels: &mut HashMap<String, (LimitsSpec, Limits)>, name: &str) {
    if !levels.contains_key(name) {
        let spec = LimitsSpec {
            name: name.to_owned(),
            ..LimitsSpec::default()
        };
        levels.insert(name.to_owned(), (spec, Limits::default()));
    }
}

/// Checks that a key's team or customer exists.
pub(crate) fn check_parents(
    spec: &LimitsSpec,
    config: &ValidConfig,
    at: &str,
    problems: &mut Vec<String>,
) {
    if let Some(t) = &spec.team {
        if !config.teams.contains_key(t) {
            problems.push(format!(
                "{at}.team: unknown team {t:?} (define it under [[teams]])"
            ));
        }
    }
    if let Some(c) = &spec.customer {
        if !config.customers.contains_key(c) {
            problems.push(format!(
                "{at}.customer: unknown customer {c:?} (define it under [[customers]])"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> LimitsSpec {
        LimitsSpec {
            name: name.into(),
            secret: Some(format!("secret-of-{name}")),
            ..LimitsSpec::default()
        }
    }

    fn problems(c: &GovernanceConfig) -> Vec<String> {
        match c.validate() {
            Ok(()) => Vec::new(),
            Err(GovernanceError::Config(p)) => p,
            Err(other) => vec![other.to_string()],
        }
    }

    #[test]
    fn each_problem_names_its_field() {
        let mut bad_period = key("c");
        bad_period.budget_usd = Some(5.0);
        bad_period.budget_period = Some("2d".into());
        let mut bad_priority = key("d");
        bad_priority.priority = Some("urgent".into());
        let mut unknown_team = key("b");
        unknown_team.team = Some("nope".into());
        let c = GovernanceConfig {
            virtual_keys: vec![key("a"), unknown_team, bad_period, bad_priority, key("a")],
            ..GovernanceConfig::default()
        };
        let p = problems(&c);
        // A team named only by its keys is a team without limits (the issue's own example).
        assert!(!p.iter().any(|m| m.contains("nope")), "{p:#?}");
        let expect = [
            "virtual_keys[2].budget_period: unknown period \"2d\"",
            "virtual_keys[3].priority: unknown priority \"urgent\"",
            "virtual_keys[4].name: duplicate virtual key \"a\"",
            "virtual_keys[4].secret: the same secret as another virtual key",
        ];
        for e in expect {
            assert!(
                p.iter().any(|m| m.starts_with(e)),
                "expected a problem starting with {e:?} in {p:#?}"
            );
        }
        assert_eq!(p.len(), expect.len(), "unexpected problems: {p:#?}");
    }

    #[test]
    fn teams_and_customers_are_checked() {
        let c = GovernanceConfig {
            teams: vec![
                LimitsSpec {
                    name: "t".into(),
                    customer: Some("ghost".into()),
                    ..LimitsSpec::default()
                },
                LimitsSpec {
                    name: "t".into(),
                    ..LimitsSpec::default()
                },
            ],
            customers: vec![LimitsSpec {
                name: "c".into(),
                secret: Some("x".repeat(10)),
                ..LimitsSpec::default()
            }],
            batch_headroom: Some(2.0),
            ..GovernanceConfig::default()
        };
        let p = problems(&c);
        assert!(!p.iter().any(|m| m.contains("ghost")), "{p:#?}");
        assert!(
            p.iter()
                .any(|m| m.starts_with("teams[1].name: duplicate team")),
            "{p:#?}"
        );
        assert!(
            p.iter().any(|m| m.starts_with("customers[0].secret:")),
            "{p:#?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("governance.batch_headroom:")),
            "{p:#?}"
        );
    }

    #[test]
    fn model_allow_list_matching() {
        let mut problems = Vec::new();
        let spec = LimitsSpec {
            name: "k".into(),
            models: Some(vec![
                "gpt-4o-mini".into(),
                "anthropic/*".into(),
                "fast".into(),
            ]),
            ..LimitsSpec::default()
        };
        let l = Limits::from_spec(&spec, Kind::Key, "k", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(l.allows_model("gpt-4o-mini"));
        assert!(
            l.allows_model("openai/gpt-4o-mini"),
            "a bare entry matches provider/model"
        );
        assert!(
            l.allows_model("anthropic/claude-sonnet-4"),
            "provider wildcard"
        );
        assert!(l.allows_model("FAST"), "route names, case-insensitive");
        assert!(!l.allows_model("gpt-4o"));
        assert!(!l.allows_model("openai/claude-sonnet-4"));
    }

    #[test]
    fn configured_secrets_may_be_hashed() {
        let d = secret_digest(
            "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
        );
        assert_eq!(d, Ok(crate::keys::hash_secret("password")));
        assert!(secret_digest("sha256:zz").is_err());
        assert!(secret_digest("").is_err());
        assert_eq!(secret_digest("vk-1"), Ok(crate::keys::hash_secret("vk-1")));
    }
}
