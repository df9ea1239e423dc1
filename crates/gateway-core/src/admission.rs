//! The `Admission` seam: who is calling, may they, and what they used.
//!
//! The server asks [`Admission::admit`] before routing; the returned [`Permit`] holds the reserved
//! capacity (a request slot, estimated tokens, estimated spend) and is settled with the actual usage
//! after the response. A permit dropped unsettled releases what it reserved, so a failed request
//! costs nothing. gateway-governance implements it; [`AllowAll`] is the default.

use std::time::Duration;

use async_trait::async_trait;

use crate::types::Usage;

/// What admission needs to know about a request.
#[derive(Debug, Clone)]
pub struct AdmissionRequest<'a> {
    /// The credential the client presented (`Authorization: Bearer` or `x-api-key`), if any.
    pub presented_key: Option<&'a str>,
    /// The model the client asked for.
    pub model: &'a str,
    /// The providers the request may reach (for provider allow-lists).
    pub providers: &'a [&'a str],
    /// The (provider, upstream model) pairs that may serve it (empty: unknown): a reservation is
    /// priced at the dearest, so a route name, which has no price of its own, reserves what its
    /// targets may cost.
    pub targets: &'a [(String, String)],
    /// Estimated input tokens.
    pub estimated_input_tokens: u64,
    /// Requested output limit (0 when the caller set none).
    pub max_output_tokens: u64,
    /// The best rate-limit headroom (0..1) among the keys that can serve the model, from the
    /// balancer's signals; low values mean capacity is short and batch traffic should yield.
    pub headroom: f64,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// No or an unknown key (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Model or provider not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// Request, token or concurrency limit reached (429).
    #[error("{message}")]
    RateLimited {
        /// The explanation.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// Budget spent (402).
    #[error("{message}")]
    BudgetExceeded {
        /// The explanation, naming the budget and its reset.
        message: String,
        /// When the budget resets, if it does.
        resets_in: Option<Duration>,
    },
    /// The store is unavailable (503).
    #[error("{0}")]
    Unavailable(String),
}

/// Capacity reserved for one request.
pub trait Permit: Send + Sync {
    /// The virtual key's name, for logs and metrics.
    fn virtual_key(&self) -> Option<&str> {
        None
    }

    /// Whether the caller is batch traffic (held back first when capacity is short).
    fn is_batch(&self) -> bool {
        false
    }

    /// The only providers this caller may reach (a virtual key's allow-list, met at every level
    /// of its hierarchy); `None` when any may. The server hands it to the engine
    /// ([`crate::engine::RequestOptions::allowed_providers`]), so a route whose targets span
    /// several providers is served only by the allowed ones.
    fn allowed_providers(&self) -> Option<&[String]> {
        None
    }

    /// Records the actual usage and cost, releasing the reservation.
    fn settle(self: Box<Self>, usage: &Usage, cost_usd: f64);
}

/// Decides whether a request may proceed.
#[async_trait]
pub trait Admission: Send + Sync + 'static {
    /// Whether this admission checks anything; when `false` the server skips building the
    /// request (no allocation on the hot path) and uses a no-op permit.
    fn enabled(&self) -> bool {
        true
    }

    /// The name of the virtual key `presented_key` belongs to, if any (used to label refusals;
    /// never on the hot path of admitted requests).
    fn key_name(&self, presented_key: Option<&str>) -> Option<String> {
        let _ = presented_key;
        None
    }

    /// Admits or refuses; on admission, reserves capacity.
    async fn admit(&self, request: &AdmissionRequest<'_>) -> Result<Box<dyn Permit>, Refusal>;

    /// Checks who is calling and what they may use, reserving nothing: for requests that generate
    /// nothing and are not billed (counting tokens). Answers the providers the caller may reach,
    /// as [`Permit::allowed_providers`]; `None` when any may.
    fn authorize(&self, request: &AdmissionRequest<'_>) -> Result<Option<Vec<String>>, Refusal> {
        let _ = request;
        Ok(None)
    }
}

/// Admits everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

struct NoPermit;

impl Permit for NoPermit {
    fn settle(self: Box<Self>, _usage: &Usage, _cost_usd: f64) {}
}

impl Refusal {
    /// A short stable name of the reason, for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::BudgetExceeded { .. } => "budget_exceeded",
            Refusal::Unavailable(_) => "unavailable",
        }
    }
}

/// A permit that reserves nothing.
pub fn no_permit() -> Box<dyn Permit> {
    Box::new(NoPermit)
}

#[async_trait]
impl Admission for AllowAll {
    fn enabled(&self) -> bool {
        false
    }

    async fn admit(&self, _request: &AdmissionRequest<'_>) -> Result<Box<dyn Permit>, Refusal> {
        Ok(Box::new(NoPermit))
    }
}
