//! `gateway-server`: parse arguments, load configuration, serve.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gateway_server::config::ConfigError;
use gateway_server::{serve, Config, Gateway, Services, DEFAULT_CONFIG};

const HELP: &str = "gateway-server: an OpenAI- and Anthropic-compatible AI gateway

USAGE:
    gateway-server [--config FILE] [--listen ADDR] [--check]

OPTIONS:
    -c, --config FILE   TOML configuration (default: the embedded demo with mock providers)
    -l, --listen ADDR   override server.listen
        --check         validate the configuration and exit
    -h, --help          this text
    -V, --version       the version
";

fn main() -> std::process::ExitCode {
    match start() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The reason, not a backtrace of `main` (whatever RUST_BACKTRACE says).
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start() -> anyhow::Result<()> {
    let mut config_path: Option<PathBuf> = None;
    let mut listen: Option<String> = None;
    let mut check = false;
    // `--flag value` and `--flag=value` alike.
    let mut args = std::env::args()
        .skip(1)
        .flat_map(|a| match a.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                vec![flag.to_owned(), value.to_owned()]
            }
            _ => vec![a],
        });
    while let Some(a) = args.next() {
        match a.as_str() {
            "-c" | "--config" => {
                config_path = Some(args.next().context("--config needs a file")?.into())
            }
            "-l" | "--listen" => listen = Some(args.next().context("--listen needs an address")?),
            "--check" => check = true,
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            "-V" | "--version" => {
                println!("gateway-server {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            other => anyhow::bail!("unknown argument `{other}`\n\n{HELP}"),
        }
    }
    let mut config = match &config_path {
        Some(p) => match Config::from_file(p) {
            Ok(c) => c,
            // Unset environment variables: report them with the file's other problems.
            Err(ConfigError::Invalid(unset)) => {
                let (c, _) = Config::from_file_lenient(p)?;
                return Err(every_problem(unset, &c).into());
            }
            Err(e) => return Err(e.into()),
        },
        None => Config::from_toml(DEFAULT_CONFIG)?,
    };
    if let Some(l) = listen {
        config.server.listen = l;
    }
    // The runtime is built after the configuration is read: `server.worker_threads` sizes it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(config.server.runtime_threads())
        .build()
        .context("cannot start the async runtime")?;
    // Everything, the accept loop included, runs on the runtime's workers, not on this thread:
    // a connection accepted here would be handed to a worker with a cross-thread wake-up.
    let served = runtime.spawn(run(config, config_path, check));
    runtime
        .block_on(served)
        .context("the gateway's main task panicked")?
}

/// The problems of a file with unset environment variables: those, then the rest.
fn every_problem(mut unset: Vec<String>, config: &Config) -> ConfigError {
    let rest = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(Services::problems(config)))
        .unwrap_or_default();
    unset.extend(rest);
    ConfigError::Invalid(unset)
}

async fn run(config: Config, config_path: Option<PathBuf>, check: bool) -> anyhow::Result<()> {
    gateway_server::init_logging(&config);
    for field in &config.unknown_fields {
        tracing::warn!(field = %field, "unknown configuration field ignored (a typo?)");
        if check {
            eprintln!("warning: unknown configuration field `{field}` ignored");
        }
    }
    if check || Services::check(&config).is_err() {
        // Validates everything, opens nothing: no data_dir, no store, no log file. Every
        // problem at once, the services' and the engine's.
        let problems = Services::problems(&config).await;
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems).into());
        }
        println!("configuration is valid");
        return Ok(());
    }
    let services = Services::start(&config).await?;
    let gateway = Gateway::new(config.clone(), config_path.clone(), services.extensions()).await?;
    services.attach(&gateway);
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(c), Some(k)) => Some(serve::tls_acceptor(c, k)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, "gateway-server listening");
    let banner = format!(
        "gateway-server listening on {scheme}://{addr} ({})",
        config_path
            .as_deref()
            .map_or("embedded demo configuration".to_owned(), |p| p
                .display()
                .to_string())
    );
    if config.logging.stdout.as_deref() == Some("json") {
        // stdout carries only the JSON request lines.
        eprintln!("{banner}");
    } else {
        println!("{banner}");
    }
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    serve::serve(
        Arc::clone(&gateway),
        listener,
        tls,
        serve::signals(Arc::clone(&gateway)),
        grace,
    )
    .await?;
    // Settled spend and queued request logs and spans are written before the process exits.
    if tokio::time::timeout(Duration::from_secs(10), services.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: telemetry and governance did not flush within 10 s");
    }
    Ok(())
}
