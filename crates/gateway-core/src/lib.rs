//! gateway-core: the embeddable heart of the AI gateway.
//!
//! Canonical request and response types ([`types`]), the [`provider::Provider`] seam, health and
//! load signals ([`signals`]), balancing strategies ([`strategy`]), and the failover [`engine`].
//! No HTTP server, no HTTP client, no database: another Rust service can embed the balancer and
//! plug in its own providers.
//!
//! See `examples/embed_core.rs` for a complete program.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod admission;
pub mod engine;
pub mod error;
pub mod extend;
pub mod observe;
pub mod provider;
pub mod ratelimit;
pub mod signals;
pub mod sim;
pub mod strategy;
pub mod testing;
pub mod types;

pub use admission::{Admission, AdmissionRequest, AllowAll, Permit, Refusal};
pub use engine::{
    ConfigError, Engine, EngineConfig, EngineStream, Failure, KeyConfig, Outcome, PinnedKey,
    ProviderConfig, RequestOptions, RetryConfig, RouteConfig, ServedBy, TargetConfig,
};
pub use error::{EngineError, FailoverScope, ProviderError, RateLimitScope};
pub use observe::{AttemptRecord, Observer, RequestRecord};
pub use provider::{
    Call, ChunkStream, Credential, ForwardAnswer, ForwardRequest, Passthrough, Provider,
    ProviderResponse, ProviderStream, Secret, StoredResponseKind, StoredResponseOp,
};
pub use ratelimit::RateLimitInfo;
pub use strategy::{Strategy, StrategyKind};
