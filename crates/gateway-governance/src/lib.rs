//! gateway-governance: virtual keys with hierarchical limits and budgets, enforced exactly,
//! durably, and across every gateway instance.
//!
//! Each consumer presents a virtual key (`Authorization: Bearer <vk>` or `x-api-key: <vk>`). A key
//! may belong to a team, and a team to a customer; a request must pass the limits of every level:
//! requests per minute, tokens per minute, requests in flight, a USD budget per period, and model
//! and provider allow-lists. Batch keys yield to interactive ones when the balancer reports little
//! rate-limit headroom.
//!
//! Unlike gateways that count usage after the response (so concurrent requests overshoot a budget),
//! admission here *reserves* the request's estimated tokens and maximum cost before it is sent and
//! settles the actual usage afterwards; a request that fails releases its reservation. Counters live
//! in memory with spend in SQLite (one instance), or in Redis behind atomic Lua scripts (many
//! instances share one set of limits). See `docs/governance.md` for the exact semantics.
//!
//! [`Governance`] implements the three seams the server offers: [`gateway_core::Admission`],
//! [`gateway_core::extend::Pricing`] and [`gateway_core::extend::AdminRoutes`].
//!
//! ```
//! # async fn demo() -> Result<(), gateway_governance::GovernanceError> {
//! use gateway_core::{Admission, AdmissionRequest};
//! use gateway_governance::{Governance, GovernanceConfig, LimitsSpec};
//!
//! let dir = std::env::temp_dir().join("governance-doc-example");
//! let gov = Governance::open(GovernanceConfig {
//!     virtual_keys: vec![LimitsSpec {
//!         name: "search-team".into(),
//!         secret: Some("vk-0123456789abcdef".into()),
//!         rpm: Some(600),
//!         budget_usd: Some(50.0),
//!         budget_period: Some("1d".into()),
//!         ..LimitsSpec::default()
//!     }],
//!     data_dir: dir,
//!     ..GovernanceConfig::default()
//! })
//! .await?;
//! let permit = gov
//!     .admit(&AdmissionRequest {
//!         presented_key: Some("vk-0123456789abcdef"),
//!         model: "gpt-4o-mini",
//!         providers: &["openai"],
//!         targets: &[],
//!         estimated_input_tokens: 200,
//!         max_output_tokens: 300,
//!         headroom: 1.0,
//!     })
//!     .await;
//! assert!(permit.is_ok());
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod admin;
pub mod clock;
pub mod config;
mod db;
mod error;
mod governance;
pub mod keys;
pub mod period;
pub mod pricing;
mod redis_store;
mod registry;
mod store;

pub use clock::{ManualClock, SystemClock, WallClock};
pub use config::{
    GovernanceConfig, GovernanceSection, Kind, Limits, LimitsSpec, PricingSpec, Priority,
    DEFAULT_BATCH_HEADROOM, DEFAULT_OUTPUT_TOKENS,
};
pub use error::GovernanceError;
pub use governance::{Governance, BATCH_RETRY_AFTER};
pub use period::Period;
pub use pricing::{Price, PriceTable};
pub use redis_store::{KEY_REFRESH, LEASE};
pub use registry::Source;
pub use store::UsageView;
