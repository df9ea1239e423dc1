//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use gateway_core::admission::{Admission, AdmissionRequest, Permit, Refusal};
use gateway_governance::{Governance, GovernanceConfig, LimitsSpec, ManualClock, PricingSpec};

/// 2026-11-24T10:00:00Z, a Tuesday.
pub const T0: i64 = 1_795_514_400_000;

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

pub fn key(name: &str) -> LimitsSpec {
    LimitsSpec {
        name: name.into(),
        secret: Some(secret(name)),
        ..LimitsSpec::default()
    }
}

pub fn secret(name: &str) -> String {
    format!("sk-test-{name}-0123456789")
}

/// A price that makes the arithmetic easy: $1 per 1000 tokens, in and out.
pub fn dollar_per_thousand() -> PricingSpec {
    PricingSpec {
        model: "test-model".into(),
        input_per_mtok: 1000.0,
        output_per_mtok: 1000.0,
        cached_input_per_mtok: None,
    }
}

pub fn config(dir: &tempfile::TempDir, keys: Vec<LimitsSpec>) -> GovernanceConfig {
    GovernanceConfig {
        virtual_keys: keys,
        pricing: vec![dollar_per_thousand()],
        data_dir: dir.path().to_path_buf(),
        ..GovernanceConfig::default()
    }
}

pub async fn open(config: GovernanceConfig, clock: &Arc<ManualClock>) -> Arc<Governance> {
    match Governance::open_with_clock(config, clock.clone()).await {
        Ok(g) => g,
        Err(e) => panic!("governance did not open: {e}"),
    }
}

/// A request of `input` + `output` tokens for `model`, served by `openai`.
pub struct Req<'a> {
    pub key: Option<&'a str>,
    pub model: &'a str,
    pub providers: &'a [&'a str],
    pub input: u64,
    pub output: u64,
    pub headroom: f64,
    pub targets: Vec<(String, String)>,
}

impl<'a> Req<'a> {
    pub fn new(key: Option<&'a str>) -> Req<'a> {
        Req {
            key,
            model: "test-model",
            providers: &["openai"],
            input: 10,
            output: 10,
            headroom: 1.0,
            targets: Vec::new(),
        }
    }

    /// The (provider, model) pairs that may serve it (a route's targets).
    pub fn targets(mut self, targets: &[(&str, &str)]) -> Self {
        self.targets = targets
            .iter()
            .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
            .collect();
        self
    }

    pub fn tokens(mut self, input: u64, output: u64) -> Self {
        self.input = input;
        self.output = output;
        self
    }

    pub fn model(mut self, model: &'a str) -> Self {
        self.model = model;
        self
    }

    pub fn providers(mut self, providers: &'a [&'a str]) -> Self {
        self.providers = providers;
        self
    }

    pub fn headroom(mut self, headroom: f64) -> Self {
        self.headroom = headroom;
        self
    }

    pub async fn admit(&self, gov: &Governance) -> Result<Box<dyn Permit>, Refusal> {
        gov.admit(&AdmissionRequest {
            presented_key: self.key,
            model: self.model,
            providers: self.providers,
            targets: &self.targets,
            estimated_input_tokens: self.input,
            max_output_tokens: self.output,
            headroom: self.headroom,
        })
        .await
    }

    pub fn authorize(&self, gov: &Governance) -> Result<Option<Vec<String>>, Refusal> {
        gov.authorize(&AdmissionRequest {
            presented_key: self.key,
            model: self.model,
            providers: self.providers,
            targets: &self.targets,
            estimated_input_tokens: self.input,
            max_output_tokens: self.output,
            headroom: self.headroom,
        })
    }
}

pub fn usage(prompt: u64, completion: u64) -> gateway_core::types::Usage {
    gateway_core::types::Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        ..Default::default()
    }
}

pub fn expect_ok(r: Result<Box<dyn Permit>, Refusal>, what: &str) -> Box<dyn Permit> {
    match r {
        Ok(p) => p,
        Err(e) => panic!("{what}: expected admission, got {e:?}"),
    }
}

pub fn expect_refused(r: Result<Box<dyn Permit>, Refusal>, what: &str) -> Refusal {
    match r {
        Ok(_) => panic!("{what}: expected a refusal, got a permit"),
        Err(e) => e,
    }
}

pub fn retry_after(r: &Refusal) -> Duration {
    match r {
        Refusal::RateLimited { retry_after, .. } => *retry_after,
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

/// Runs `n` admissions at once on the runtime's worker threads; returns how many were admitted
/// (their permits are kept until the end so concurrency and reservations stay held).
pub async fn admit_concurrently(
    govs: &[Arc<Governance>],
    secret: &str,
    n: usize,
) -> (usize, Vec<Refusal>) {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let gov = govs[i % govs.len()].clone();
        let secret = secret.to_string();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            Req::new(Some(&secret)).admit(&gov).await.map(|p| {
                // Keep the permit alive past the race: settle it as a real (free) request.
                p.settle(&usage(1, 1), 0.0);
            })
        }));
    }
    let mut admitted = 0;
    let mut refusals = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => admitted += 1,
            Ok(Err(r)) => refusals.push(r),
            Err(e) => panic!("admission task failed: {e}"),
        }
    }
    (admitted, refusals)
}
