//! The admin API (`gateway_core::extend::AdminRoutes`): virtual keys, teams and customers.
//!
//! | method | path | does |
//! |---|---|---|
//! | `GET` | `/admin/virtual-keys` | lists keys (never secrets) |
//! | `POST` | `/admin/virtual-keys` | creates a key; answers `{"name", "secret"}` once |
//! | `GET` | `/admin/virtual-keys/{name}` | limits and current usage |
//! | `PATCH` | `/admin/virtual-keys/{name}` | JSON merge patch of the limits (`null` removes one) |
//! | `PUT` | `/admin/virtual-keys/{name}` | replaces the limits |
//! | `POST` | `/admin/virtual-keys/{name}/rotate` | new secret; the old one stops working |
//! | `DELETE` | `/admin/virtual-keys/{name}` | revokes the key |
//! | `GET` | `/admin/teams`, `/admin/teams/{name}` | teams, with usage |
//! | `GET` | `/admin/customers`, `/admin/customers/{name}` | customers, with usage |
//! | `GET` | `/admin/pricing?model=...` | the price the table gives a model |
//!
//! Keys from the configuration file are read-only here (409): edit the file and reload.

use std::sync::Arc;

use async_trait::async_trait;
use gateway_core::extend::AdminRoutes;
use serde_json::{json, Value};

use crate::config::{check_parents, secret_digest, Kind, Limits, LimitsSpec};
use crate::db::StoredKey;
use crate::governance::Governance;
use crate::keys::generate_secret;
use crate::period::rfc3339;
use crate::registry::{KeyEntry, Registry, Source};
use crate::store::Level;

type Answer = (u16, Value);

fn error(status: u16, message: impl Into<String>) -> Answer {
    let message = message.into();
    let kind = match status {
        400 => "invalid_request_error",
        404 => "not_found_error",
        409 => "conflict_error",
        _ => "api_error",
    };
    (status, json!({"error": {"message": message, "type": kind}}))
}

#[async_trait]
impl AdminRoutes for Governance {
    async fn handle(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Option<(u16, Value)> {
        let rest = path.strip_prefix("/admin").unwrap_or(path);
        let parts: Vec<&str> = rest.trim_matches('/').split('/').collect();
        let answer = match (method, parts.as_slice()) {
            ("GET", ["virtual-keys"]) => self.list_keys(),
            ("POST", ["virtual-keys"]) => self.create_key(body).await,
            ("GET", ["virtual-keys", name]) => self.show_key(name).await,
            ("PATCH", ["virtual-keys", name]) => self.update_key(name, body, true).await,
            ("PUT", ["virtual-keys", name]) => self.update_key(name, body, false).await,
            ("DELETE", ["virtual-keys", name]) => self.delete_key(name).await,
            ("POST", ["virtual-keys", name, "rotate"]) => self.rotate_key(name).await,
            ("GET", ["teams"]) => self.list_groups(Kind::Team),
            ("GET", ["teams", name]) => self.show_group(Kind::Team, name).await,
            ("GET", ["customers"]) => self.list_groups(Kind::Customer),
            ("GET", ["customers", name]) => self.show_group(Kind::Customer, name).await,
            ("GET", ["pricing"]) => self.show_price(query),
            (_, ["virtual-keys", ..] | ["teams", ..] | ["customers", ..] | ["pricing"]) => {
                error(405, format!("{method} is not supported on {path}"))
            }
            _ => return None,
        };
        Some(answer)
    }
}

fn limits_json(spec: &LimitsSpec) -> Value {
    json!({
        "rpm": spec.rpm,
        "tpm": spec.tpm,
        "max_concurrent": spec.max_concurrent,
        "budget_usd": spec.budget_usd,
        "budget_period": spec.budget_period,
        "models": spec.models,
        "providers": spec.providers,
        "priority": spec.priority,
    })
}

fn key_json(k: &KeyEntry) -> Value {
    let mut v = json!({
        "name": k.spec.name,
        "team": k.spec.team,
        "customer": k.spec.customer,
        "source": k.source,
        "priority": k.priority,
        "created_at": k.created_ms.map(rfc3339),
        "updated_at": k.updated_ms.map(rfc3339),
    });
    if let (Value::Object(o), Value::Object(limits)) = (&mut v, limits_json(&k.spec)) {
        o.extend(limits);
    }
    v
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

impl Governance {
    fn list_keys(&self) -> Answer {
        let reg = self.registry.load();
        let keys: Vec<Value> = reg.keys.values().map(|k| key_json(k)).collect();
        (200, json!({ "virtual_keys": keys }))
    }

    async fn usage_json(&self, level: &Level) -> Value {
        let now = self.clock.now_ms();
        let (start, end) = level.limits.period.bounds(now);
        let mut v = json!({
            "budget_usd": level.limits.budget_usd,
            "budget_period": level.limits.period.as_config(),
            "period_start": (end.is_some()).then(|| rfc3339(start)),
            "resets_at": end.map(rfc3339),
            "resets_in_seconds": end.map(|e| (e - now).max(0) / 1000),
            "rpm": level.limits.rpm,
            "tpm": level.limits.tpm,
            "max_concurrent": level.limits.max_concurrent,
        });
        match self.counters.usage(level).await {
            Ok(u) => {
                if let (Value::Object(o), Ok(Value::Object(usage))) =
                    (&mut v, serde_json::to_value(&u))
                {
                    o.extend(usage);
                }
                if let (Value::Object(o), Some(budget)) = (&mut v, level.limits.budget_usd) {
                    o.insert(
                        "remaining_usd".into(),
                        json!((budget - u.spend_usd).max(0.0)),
                    );
                }
            }
            Err(e) => {
                if let Value::Object(o) = &mut v {
                    o.insert("usage_error".into(), json!(e));
                }
            }
        }
        v
    }

    async fn show_key(&self, name: &str) -> Answer {
        let Some(entry) = self.registry.load().keys.get(name).cloned() else {
            return error(404, format!("no virtual key named {name:?}"));
        };
        let mut v = key_json(&entry);
        match &entry.levels {
            Ok(levels) => {
                let mut usage = Vec::new();
                for l in levels {
                    usage.push(self.usage_json(l).await);
                }
                if let Value::Object(o) = &mut v {
                    if let Some(Value::Object(own)) = usage.first() {
                        // The key's own usage also at the top (`spend_usd`, `remaining_usd`,
                        // `requests_this_minute`, …), where a reader looks first.
                        for (field, value) in own {
                            if !o.contains_key(field) {
                                o.insert(field.clone(), value.clone());
                            }
                        }
                        o.insert("usage".into(), Value::Object(own.clone()));
                    }
                    for (l, u) in levels.iter().zip(&usage).skip(1) {
                        let field = match l.kind {
                            Kind::Team => "team_usage",
                            _ => "customer_usage",
                        };
                        o.insert(field.into(), u.clone());
                    }
                }
            }
            Err(problem) => {
                if let Value::Object(o) = &mut v {
                    o.insert("problem".into(), json!(problem));
                }
            }
        }
        (200, v)
    }

    /// Validates a spec for an API-made key against the current registry.
    fn check_spec(&self, reg: &Registry, spec: &LimitsSpec) -> Result<Limits, Answer> {
        let mut problems = Vec::new();
        let limits = Limits::from_spec(spec, Kind::Key, "virtual_key", &mut problems);
        check_parents(spec, &reg.config, "virtual_key", &mut problems);
        if problems.is_empty() {
            Ok(limits)
        } else {
            Err((
                400,
                json!({"error": {"message": problems.join("; "), "type": "invalid_request_error", "problems": problems}}),
            ))
        }
    }

    async fn create_key(&self, body: &[u8]) -> Answer {
        let mut spec: LimitsSpec = match serde_json::from_slice(body) {
            Ok(s) => s,
            Err(e) => return error(400, format!("invalid virtual key: {e}")),
        };
        let reg = self.registry.load_full();
        if let Err(answer) = self.check_spec(&reg, &spec) {
            return answer;
        }
        if reg.keys.contains_key(&spec.name) {
            return error(409, format!("virtual key {:?} already exists", spec.name));
        }
        let secret = match spec.secret.take() {
            Some(s) => s,
            None => match generate_secret() {
                Ok(s) => s,
                Err(e) => return error(500, e.to_string()),
            },
        };
        let digest = match secret_digest(&secret) {
            Ok(d) => d,
            Err(e) => return error(400, format!("virtual_key.secret: {e}")),
        };
        if reg.by_digest.contains_key(&digest) {
            return error(
                409,
                "virtual_key.secret: another virtual key uses this secret",
            );
        }
        let now = self.clock.now_ms();
        let stored = StoredKey {
            spec: spec.clone(),
            digest,
            created_ms: now,
            updated_ms: now,
        };
        if let Err(e) = self.store_insert_key(stored.clone()).await {
            let status = if e.contains("already exists") {
                409
            } else {
                500
            };
            return error(status, e);
        }
        self.put_api_key(stored);
        tracing::info!(key = %spec.name, "virtual key created through the admin API");
        (201, json!({"name": spec.name, "secret": secret}))
    }

    fn put_api_key(&self, key: StoredKey) {
        self.registry.rcu(|current| {
            let mut api = (*current.api).clone();
            api.insert(key.spec.name.clone(), key.clone());
            Registry::build(current.config.clone(), Arc::new(api))
        });
    }

    /// The API-made key `name`, or the answer explaining why it cannot be changed.
    fn api_key(&self, name: &str) -> Result<StoredKey, Answer> {
        let reg = self.registry.load();
        match reg.keys.get(name).map(|k| k.source) {
            None => Err(error(404, format!("no virtual key named {name:?}"))),
            Some(Source::Config) => Err(error(
                409,
                format!("virtual key {name:?} is defined in the configuration file: edit the file and reload"),
            )),
            Some(Source::Api) => reg
                .api
                .get(name)
                .cloned()
                .ok_or_else(|| error(404, format!("no virtual key named {name:?}"))),
        }
    }

    async fn update_key(&self, name: &str, body: &[u8], merge: bool) -> Answer {
        let current = match self.api_key(name) {
            Ok(k) => k,
            Err(answer) => return answer,
        };
        let patch: Value = match serde_json::from_slice(body) {
            Ok(Value::Object(o)) => Value::Object(o),
            Ok(_) => return error(400, "the body must be a JSON object"),
            Err(e) => return error(400, format!("invalid JSON: {e}")),
        };
        if patch.get("secret").is_some_and(|s| !s.is_null()) {
            return error(
                400,
                format!("virtual_key.secret: use POST /admin/virtual-keys/{name}/rotate"),
            );
        }
        if patch.get("name").is_some_and(|n| n.as_str() != Some(name)) {
            return error(400, "virtual_key.name: a key cannot be renamed");
        }
        let mut value = if merge {
            match serde_json::to_value(&current.spec) {
                Ok(v) => v,
                Err(e) => return error(500, e.to_string()),
            }
        } else {
            json!({"name": name})
        };
        merge_patch(&mut value, &patch);
        let spec: LimitsSpec = match serde_json::from_value(value) {
            Ok(s) => s,
            Err(e) => return error(400, format!("invalid virtual key: {e}")),
        };
        let reg = self.registry.load_full();
        if let Err(answer) = self.check_spec(&reg, &spec) {
            return answer;
        }
        let updated = StoredKey {
            spec,
            updated_ms: self.clock.now_ms(),
            ..current
        };
        if let Err(e) = self.store_update_key(updated.clone()).await {
            return error(500, e);
        }
        self.put_api_key(updated);
        self.show_key(name).await
    }

    async fn rotate_key(&self, name: &str) -> Answer {
        let current = match self.api_key(name) {
            Ok(k) => k,
            Err(answer) => return answer,
        };
        let secret = match generate_secret() {
            Ok(s) => s,
            Err(e) => return error(500, e.to_string()),
        };
        let updated = StoredKey {
            digest: crate::keys::hash_secret(&secret),
            updated_ms: self.clock.now_ms(),
            ..current
        };
        if let Err(e) = self.store_update_key(updated.clone()).await {
            return error(500, e);
        }
        self.put_api_key(updated);
        tracing::info!(key = %name, "virtual key rotated");
        (200, json!({"name": name, "secret": secret}))
    }

    async fn delete_key(&self, name: &str) -> Answer {
        if let Err(answer) = self.api_key(name) {
            return answer;
        }
        if let Err(e) = self.store_delete_key(name).await {
            return error(500, e);
        }
        self.registry.rcu(|current| {
            let mut api = (*current.api).clone();
            api.remove(name);
            Registry::build(current.config.clone(), Arc::new(api))
        });
        tracing::info!(key = %name, "virtual key revoked");
        (200, json!({"deleted": name}))
    }

    fn list_groups(&self, kind: Kind) -> Answer {
        let reg = self.registry.load();
        let groups: Vec<Value> = match kind {
            Kind::Team => reg
                .config
                .teams
                .values()
                .map(|(spec, _)| group_json(spec, &reg, kind))
                .collect(),
            _ => reg
                .config
                .customers
                .values()
                .map(|(spec, _)| group_json(spec, &reg, kind))
                .collect(),
        };
        let mut groups = groups;
        groups.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        (200, json!({ kind.section(): groups }))
    }

    async fn show_group(&self, kind: Kind, name: &str) -> Answer {
        let reg = self.registry.load_full();
        let found = match kind {
            Kind::Team => reg
                .config
                .teams
                .get(name)
                .map(|(s, _)| s)
                .zip(reg.teams.get(name).map(|(l, _)| l)),
            _ => reg
                .config
                .customers
                .get(name)
                .map(|(s, _)| s)
                .zip(reg.customers.get(name)),
        };
        let Some((spec, level)) = found else {
            return error(404, format!("no {} named {name:?}", kind.noun()));
        };
        let mut v = group_json(spec, &reg, kind);
        let usage = self.usage_json(level).await;
        if let Value::Object(o) = &mut v {
            o.insert("usage".into(), usage);
        }
        (200, v)
    }

    fn show_price(&self, query: &str) -> Answer {
        let table = self.pricing.load();
        match query_param(query, "model") {
            Some(model) => match table.lookup(model) {
                Some(p) => (200, json!({"model": model, "price": p})),
                None => error(404, format!("no price for model {model:?}")),
            },
            None => {
                let entries: Vec<Value> = table
                    .entries()
                    .into_iter()
                    .map(|(m, p)| json!({"model": m, "price": p}))
                    .collect();
                (200, json!({ "pricing": entries }))
            }
        }
    }
}

fn group_json(spec: &LimitsSpec, reg: &Registry, kind: Kind) -> Value {
    let members: Vec<&str> = match kind {
        Kind::Team => reg
            .keys
            .values()
            .filter(|k| k.spec.team.as_deref() == Some(spec.name.as_str()))
            .map(|k| k.spec.name.as_str())
            .collect(),
        _ => reg
            .config
            .teams
            .values()
            .filter(|(t, _)| t.customer.as_deref() == Some(spec.name.as_str()))
            .map(|(t, _)| t.name.as_str())
            .collect(),
    };
    let mut v = json!({ "name": spec.name, "customer": spec.customer });
    if let (Value::Object(o), Value::Object(limits)) = (&mut v, limits_json(spec)) {
        o.extend(limits);
        o.insert(
            if kind == Kind::Team {
                "virtual_keys"
            } else {
                "teams"
            }
            .into(),
            json!(members),
        );
    }
    v
}

/// RFC 7396 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}
