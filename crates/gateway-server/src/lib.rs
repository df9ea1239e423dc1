//! gateway-server: the drop-in OpenAI- and Anthropic-compatible gateway.
//!
//! [`app::Gateway`] decodes the client dialects into gateway-core's canonical types, asks the
//! [`gateway_core::Admission`] seam who may call, lets the [`gateway_core::Engine`] balance and
//! fail over, and encodes the answer (JSON or SSE) back in the caller's dialect. [`serve`] accepts
//! connections with graceful shutdown and SIGHUP reload.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod anthropic;
pub mod app;
pub mod assemble;
pub mod config;
pub mod errors;
pub mod openai;
pub mod serve;

pub use app::{Extensions, Gateway};
pub use config::Config;

/// The embedded default configuration (`examples/demo.toml`): mock providers, no keys needed.
pub const DEFAULT_CONFIG: &str = include_str!("../../../examples/demo.toml");

/// Installs the `tracing` subscriber: `RUST_LOG`, else `[logging] level`, else `info`.
pub fn init_logging(config: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| config.logging.level.clone())
        .unwrap_or_else(|| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Builds the extensions a configuration asks for (admission, observers, pricing, metrics).
pub async fn extensions(config: &Config) -> Result<Extensions, app::StartError> {
    let _ = config;
    Ok(Extensions::default())
}
