//! `gateway-server`: parse arguments, load configuration, serve.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
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

fn main() -> anyhow::Result<()> {
    let mut config_path: Option<PathBuf> = None;
    let mut listen: Option<String> = None;
    let mut check = false;
    let mut args = std::env::args().skip(1);
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
        Some(p) => Config::from_file(p)?,
        None => Config::from_toml(DEFAULT_CONFIG)?,
    };
    if let Some(l) = listen {
        config.server.listen = l;
    }
    // The runtime is built after the configuration is read: `server.worker_threads` sizes it.
    let workers = config
        .server
        .worker_threads
        .filter(|n| (1..=1024).contains(n))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if !check {
        cap_malloc_arenas(workers);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().worker_threads(workers);
    runtime
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(config, config_path, check))
}

/// The environment variable that caps glibc's malloc arenas.
const ARENA_MAX: &str = "MALLOC_ARENA_MAX";

/// glibc's malloc gives threads their own arenas, up to eight per core, and keeps what they freed:
/// with a few hundred requests in flight the gateway's resident set grew to twice what the same
/// work needs in one arena per worker (docs/benchmarks.md). The cap can only be set before
/// malloc starts, so the process runs itself again, same arguments and pid, with
/// `MALLOC_ARENA_MAX` set to the worker count (at least 2). Nothing happens when the variable or
/// `GLIBC_TUNABLES` is already set (the operator decides), off glibc, or when the re-run fails
/// (the gateway then carries on with glibc's default).
fn cap_malloc_arenas(workers: usize) {
    if !cfg!(all(target_os = "linux", target_env = "gnu"))
        || std::env::var_os(ARENA_MAX).is_some()
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(ARENA_MAX, workers.max(2).to_string())
            .exec();
        eprintln!("gateway-server: could not re-run itself with {ARENA_MAX} set ({err}); continuing with glibc's default arenas");
    }
}

async fn run(config: Config, config_path: Option<PathBuf>, check: bool) -> anyhow::Result<()> {
    gateway_server::init_logging(&config);
    for field in &config.unknown_fields {
        tracing::warn!(field = %field, "unknown configuration field ignored (a typo?)");
        if check {
            eprintln!("warning: unknown configuration field `{field}` ignored");
        }
    }
    let services = Services::start(&config).await?;
    let gateway = Gateway::new(config.clone(), config_path.clone(), services.extensions()).await?;
    services.attach(&gateway);
    if check {
        println!("configuration is valid");
        return Ok(());
    }
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
    println!(
        "gateway-server listening on {scheme}://{addr} ({})",
        config_path
            .as_deref()
            .map_or("embedded demo configuration".to_owned(), |p| p
                .display()
                .to_string())
    );
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    serve::serve(
        Arc::clone(&gateway),
        listener,
        tls,
        serve::signals(Arc::clone(&gateway)),
        grace,
    )
    .await?;
    Ok(())
}
