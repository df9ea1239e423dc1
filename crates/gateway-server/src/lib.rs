//! gateway-server: the drop-in OpenAI- and Anthropic-compatible gateway.
//!
//! [`app::Gateway`] decodes the client dialects into gateway-core's canonical types, asks the
//! [`gateway_core::Admission`] seam who may call, lets the [`gateway_core::Engine`] balance and
//! fail over, and encodes the answer (JSON or SSE) back in the caller's dialect. [`serve`] accepts
//! connections with graceful shutdown and SIGHUP reload.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod affinity;
pub mod anthropic;
pub mod app;
pub mod assemble;
pub mod cache;
pub mod config;
pub mod errors;
pub mod openai;
pub mod responses;
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
        // Colours only for a terminal: not in files, journals or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Governance and telemetry of a running gateway: build them from the configuration, hand their
/// extensions to [`Gateway::new`], attach the engine, flush them on shutdown.
pub struct Services {
    /// Virtual keys, limits, budgets, pricing.
    pub governance: std::sync::Arc<gateway_governance::Governance>,
    /// Metrics, request logs, traces.
    pub telemetry: std::sync::Arc<gateway_telemetry::Telemetry>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Services")
    }
}

/// The governance configuration of a gateway configuration.
pub fn governance_config(config: &Config) -> gateway_governance::GovernanceConfig {
    gateway_governance::GovernanceConfig::from_sections(
        config.governance.clone(),
        config.virtual_keys.clone(),
        config.teams.clone(),
        config.customers.clone(),
        config.pricing.clone(),
        config.server.data_dir.clone(),
    )
}

impl Services {
    /// Checks what [`Services::start`] would refuse, opening nothing: no store, no file, no
    /// connection (for `--check`).
    pub fn check(config: &Config) -> Result<(), config::ConfigError> {
        let mut problems = Vec::new();
        match governance_config(config).validate() {
            Ok(()) => {}
            // Each names its field already (`virtual_keys[2].budget_period: ...`).
            Err(gateway_governance::GovernanceError::Config(p)) => problems.extend(p),
            Err(e) => problems.push(format!("governance: {e}")),
        }
        if let Err(e) = otlp_protocol(config) {
            problems.push(e);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(config::ConfigError::Invalid(problems))
        }
    }

    /// Every problem of `config` at once: the services' ([`Services::check`]) and the engine's
    /// (providers, routes, keys), one line each. Builds a gateway to find the latter and drops it.
    pub async fn problems(config: &Config) -> Vec<String> {
        let mut out = match Services::check(config) {
            Ok(()) => Vec::new(),
            Err(config::ConfigError::Invalid(p)) => p,
            Err(e) => vec![e.to_string()],
        };
        match Gateway::new(config.clone(), None, Extensions::default()).await {
            Ok(_) => {}
            Err(app::StartError::Config(config::ConfigError::Invalid(p))) => out.extend(p),
            Err(e) => out.push(e.to_string()),
        }
        out
    }

    /// Opens the stores and starts the background writers.
    pub async fn start(config: &Config) -> Result<Services, app::StartError> {
        let governance = gateway_governance::Governance::open(governance_config(config))
            .await
            .map_err(|e| config::ConfigError::Invalid(vec![format!("governance: {e}")]))?;
        let l = &config.logging;
        let telemetry = gateway_telemetry::Telemetry::start(gateway_telemetry::TelemetryConfig {
            data_dir: config.server.data_dir.clone(),
            stdout_json: l.stdout.as_deref() == Some("json"),
            log_content: l.content,
            retention_days: l.retention_days,
            retention_rows: l.retention_rows,
            queue_capacity: l.queue_capacity.unwrap_or(10_000),
            writer_priority: l.writer_priority.unwrap_or_default(),
            otlp_endpoint: config
                .telemetry
                .otlp_endpoint
                .clone()
                .or_else(|| {
                    otel_env(&[
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                        "OTEL_EXPORTER_OTLP_ENDPOINT",
                    ])
                })
                .filter(|e| !e.is_empty()),
            otlp_protocol: otlp_protocol(config)
                .map_err(|e| config::ConfigError::Invalid(vec![e]))?,
            service_name: config
                .telemetry
                .service_name
                .clone()
                .or_else(|| otel_env(&["OTEL_SERVICE_NAME"]))
                .unwrap_or_else(|| "ai-gateway".to_owned()),
        })
        .map_err(|e| config::ConfigError::Invalid(vec![format!("telemetry: {e}")]))?;
        Ok(Services {
            governance,
            telemetry,
        })
    }

    /// The extensions to build the gateway with.
    pub fn extensions(&self) -> Extensions {
        let gov = std::sync::Arc::clone(&self.governance);
        let reload_gov = std::sync::Arc::clone(&self.governance);
        Extensions {
            admission: gov.clone(),
            pricing: gov.clone(),
            observer: self.telemetry.observer(),
            metrics: Some(self.telemetry.metrics_renderer()),
            admin: Some(std::sync::Arc::new(app::AdminChain(vec![
                gov as std::sync::Arc<dyn gateway_core::extend::AdminRoutes>,
                self.telemetry.admin_routes(),
            ]))),
            on_reload: Some(std::sync::Arc::new(move |c: &Config| {
                reload_gov
                    .reload(&governance_config(c))
                    .map_err(|e| format!("governance: {e}"))
            })),
            ..Extensions::default()
        }
    }

    /// Lets metrics read the engine's key and provider health.
    pub fn attach(&self, gateway: &std::sync::Arc<Gateway>) {
        self.telemetry.attach_engine(gateway.engine());
    }

    /// Writes what is queued (settled spend, request logs) before the process exits.
    pub async fn shutdown(&self) {
        if let Err(e) = self.governance.flush().await {
            tracing::error!(error = %e, "could not flush governance state");
        }
        self.telemetry.flush().await;
    }
}

/// `[telemetry] otlp_protocol`, else the OpenTelemetry environment's, else protobuf.
fn otlp_protocol(config: &Config) -> Result<gateway_telemetry::OtlpProtocol, String> {
    config
        .telemetry
        .otlp_protocol
        .clone()
        .or_else(|| {
            otel_env(&[
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ])
        })
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("telemetry.otlp_protocol: {e}"))
}

/// The first of the OpenTelemetry environment variables that is set and not empty.
fn otel_env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
}
