//! `cargo xtask bench overhead`: what the gateway adds to a request, at a fixed arrival rate.
//!
//! Builds the release binaries, starts `gateway-mock` and `gateway-server` on 127.0.0.1, and for
//! each upstream latency, streaming mode and rate runs the same open-loop load ([`crate::load`])
//! straight at the mock (`direct`), through the gateway, and through `--target` if given. Reports
//! latency percentiles measured from the scheduled send time, their difference (the added
//! latency), CPU time per request of every process from `/proc/<pid>/stat`, and the gateway's peak
//! resident set (`VmHWM`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION};
use serde::Serialize;

use crate::load::{self, Outcome, Plan, Target};
use crate::procfs::{self, Machine, Pid};

const HELP: &str = "cargo xtask bench overhead [OPTIONS]

Open-loop load straight at a mock upstream and through the release gateway, same run.

OPTIONS:
    --rates R1,R2,..      requests per second (default 1000,5000)
    --duration SECS       measured seconds per run (default 10)
    --warmup SECS         unmeasured seconds before each run (default 1)
    --latency-ms L1,..    upstream latencies of the mock (default 0,50)
    --stream MODE         both | on | off (default both)
    --api API             openai (POST /v1/chat/completions, Bearer key) or anthropic (POST
                          /v1/messages, x-api-key, anthropic-version; the gateway then serves
                          it from an anthropic-kind provider at the mock, the full decode and
                          re-encode path) (default openai)
    --target URL          also benchmark another OpenAI-compatible gateway (base URL with /v1)
                          pointed at the mock this command starts (see --mock-port)
    --target-model NAME   model the target is asked for (default gpt-4o-mini)
    --target-key KEY      bearer key for the target
    --target-pid PID      the target's process, for its CPU and memory
    --target-name NAME    label of the target in reports (default target)
    --wait-target SECS    how long to wait for the target to answer (default 120)
    --mock-port PORT      port of the mock (default: a free port; 18089 with --target)
    --mock-url URL        use an already running gateway-mock (root URL, no /v1)
    --mock-pid PID        its process, for its CPU
    --no-gateway          do not start or measure this gateway
    --gateway-workers N   run the gateway with `server.worker_threads = N` (default: the
                          gateway's own default, half the cores)
    --bare-proxy          also measure a minimal forwarding proxy (`xtask bare-proxy`: hyper, no
                          JSON, no logs, as many runtime workers as the gateway) as the floor of
                          what any proxy adds on this machine
    --nice N              run the generator, the mock and the gateway at this nice value
                          (-10 gives them priority over other work on a shared machine)
    --gen-threads N       worker threads of the load generator's runtime (default 2)
    --no-build            use the binaries already in target/release
    --out DIR             where results go (default target/bench)
";

/// The API the load speaks, straight to the mock and through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Api {
    /// OpenAI chat completions: the gateway's pass-through path to an OpenAI-format upstream.
    OpenAi,
    /// Anthropic messages, served by an Anthropic-format upstream: the Anthropic pass-through
    /// (the client's body sent on with its model replaced; every answer and event read for
    /// usage and passed on as it came).
    Anthropic,
}

impl Api {
    /// The path under a base URL that ends in `/v1`.
    fn path(self) -> &'static str {
        match self {
            Api::OpenAi => "/chat/completions",
            Api::Anthropic => "/messages",
        }
    }

    /// The gateway's route for this API (see `gateway_config`).
    fn route(self) -> &'static str {
        match self {
            Api::OpenAi => "bench",
            Api::Anthropic => "bench-anthropic",
        }
    }

    /// The model asked of the mock directly.
    fn upstream_model(self) -> &'static str {
        match self {
            Api::OpenAi => "gpt-4o-mini",
            Api::Anthropic => "claude-3-5-haiku-latest",
        }
    }

    /// The headers of a request, with `key` if the receiver checks one.
    fn headers(self, key: Option<&str>) -> Result<Vec<(HeaderName, HeaderValue)>> {
        let mut h = Vec::new();
        match self {
            Api::OpenAi => {
                if let Some(k) = key {
                    h.push((
                        AUTHORIZATION,
                        HeaderValue::from_str(&format!("Bearer {k}"))?,
                    ));
                }
            }
            Api::Anthropic => {
                if let Some(k) = key {
                    h.push((
                        HeaderName::from_static("x-api-key"),
                        HeaderValue::from_str(k)?,
                    ));
                }
                h.push((
                    HeaderName::from_static("anthropic-version"),
                    HeaderValue::from_static("2023-06-01"),
                ));
            }
        }
        Ok(h)
    }

    /// What the last bytes of a complete stream hold.
    fn end(self) -> &'static [u8] {
        match self {
            Api::OpenAi => b"[DONE]",
            Api::Anthropic => b"message_stop",
        }
    }

    /// A chat request of about 1 KB.
    fn body(self, model: &str, stream: bool) -> Bytes {
        const SENTENCE: &str = "The quarterly report shows steady growth in every region, with costs held flat and margins improving. ";
        let mut prompt =
            String::from("Summarise the following notes in three short bullet points. ");
        while prompt.len() < 880 {
            prompt.push_str(SENTENCE);
        }
        let body = match self {
            Api::OpenAi => serde_json::json!({
                "model": model,
                "messages": [
                    {"role": "system", "content": "You are a concise assistant."},
                    {"role": "user", "content": prompt},
                ],
                "max_tokens": 256,
                "temperature": 0.2,
                "stream": stream,
            }),
            Api::Anthropic => serde_json::json!({
                "model": model,
                "system": "You are a concise assistant.",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 256,
                "temperature": 0.2,
                "stream": stream,
            }),
        };
        Bytes::from(body.to_string())
    }
}

/// Streaming modes to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamMode {
    Both,
    On,
    Off,
}

impl StreamMode {
    fn modes(self) -> &'static [bool] {
        match self {
            StreamMode::Both => &[false, true],
            StreamMode::On => &[true],
            StreamMode::Off => &[false],
        }
    }
}

/// Options of `bench overhead`.
#[derive(Debug, Clone)]
pub struct Options {
    rates: Vec<f64>,
    duration: Duration,
    warmup: Duration,
    latencies_ms: Vec<u64>,
    stream: StreamMode,
    api: Api,
    target: Option<String>,
    target_model: String,
    target_key: Option<String>,
    target_pid: Option<u32>,
    target_name: String,
    wait_target: Duration,
    mock_port: Option<u16>,
    mock_url: Option<String>,
    mock_pid: Option<u32>,
    gateway: bool,
    bare_proxy: bool,
    gateway_workers: Option<usize>,
    build: bool,
    nice: Option<i32>,
    gen_threads: usize,
    out: Option<PathBuf>,
    command: String,
}

fn list<T: std::str::FromStr>(flag: &str, v: &str) -> Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|e| anyhow::anyhow!("{flag} {v}: `{s}`: {e}"))
        })
        .collect()
}

impl Options {
    /// Parses the arguments after `bench overhead`; `None` means help was printed.
    pub fn parse(args: &[String]) -> Result<Option<Options>> {
        let mut o = Options {
            rates: vec![1000.0, 5000.0],
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            latencies_ms: vec![0, 50],
            stream: StreamMode::Both,
            api: Api::OpenAi,
            target: None,
            target_model: "gpt-4o-mini".to_owned(),
            target_key: None,
            target_pid: None,
            target_name: "target".to_owned(),
            wait_target: Duration::from_secs(120),
            mock_port: None,
            mock_url: None,
            mock_pid: None,
            gateway: true,
            bare_proxy: false,
            gateway_workers: None,
            build: true,
            nice: None,
            gen_threads: 2,
            out: None,
            command: format!("cargo xtask bench overhead {}", args.join(" "))
                .trim_end()
                .to_owned(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value (see --help)"))
            };
            let secs = |v: String| -> Result<Duration> {
                let s: f64 = v.parse().with_context(|| format!("{flag} {v}"))?;
                if !(s > 0.0 && s < 3600.0) {
                    bail!("{flag} {v}: must be between 0 and 3600 seconds");
                }
                Ok(Duration::from_secs_f64(s))
            };
            match flag.as_str() {
                "-h" | "--help" => {
                    print!("{HELP}");
                    return Ok(None);
                }
                "--rates" => o.rates = list(flag, &value()?)?,
                "--duration" => o.duration = secs(value()?)?,
                "--warmup" => {
                    let v = value()?;
                    o.warmup = if v == "0" { Duration::ZERO } else { secs(v)? }
                }
                "--latency-ms" => o.latencies_ms = list(flag, &value()?)?,
                "--stream" => {
                    o.stream = match value()?.as_str() {
                        "both" => StreamMode::Both,
                        "on" | "true" | "yes" => StreamMode::On,
                        "off" | "false" | "no" => StreamMode::Off,
                        other => bail!("--stream {other}: expected both, on or off"),
                    }
                }
                "--api" => {
                    o.api = match value()?.as_str() {
                        "openai" => Api::OpenAi,
                        "anthropic" => Api::Anthropic,
                        other => bail!("--api {other}: expected openai or anthropic"),
                    }
                }
                "--target" => o.target = Some(value()?.trim_end_matches('/').to_owned()),
                "--target-model" => o.target_model = value()?,
                "--target-key" => o.target_key = Some(value()?),
                "--target-pid" => o.target_pid = Some(value()?.parse().context("--target-pid")?),
                "--target-name" => o.target_name = value()?,
                "--wait-target" => o.wait_target = secs(value()?)?,
                "--mock-port" => o.mock_port = Some(value()?.parse().context("--mock-port")?),
                "--mock-url" => o.mock_url = Some(value()?.trim_end_matches('/').to_owned()),
                "--mock-pid" => o.mock_pid = Some(value()?.parse().context("--mock-pid")?),
                "--no-gateway" => o.gateway = false,
                "--bare-proxy" => o.bare_proxy = true,
                "--gateway-workers" => {
                    let v = value()?;
                    let n: usize = v
                        .parse()
                        .with_context(|| format!("--gateway-workers {v}"))?;
                    if !(1..=1024).contains(&n) {
                        bail!("--gateway-workers {v}: must be between 1 and 1024");
                    }
                    o.gateway_workers = Some(n);
                }
                "--no-build" => o.build = false,
                "--gen-threads" => {
                    let v = value()?;
                    o.gen_threads = v.parse().with_context(|| format!("--gen-threads {v}"))?;
                    if !(1..=64).contains(&o.gen_threads) {
                        bail!("--gen-threads {v}: must be between 1 and 64");
                    }
                }
                "--nice" => {
                    let v = value()?;
                    let n: i32 = v.parse().with_context(|| format!("--nice {v}"))?;
                    if !(-20..=19).contains(&n) {
                        bail!("--nice {v}: must be between -20 and 19");
                    }
                    o.nice = Some(n);
                }
                "--out" => o.out = Some(PathBuf::from(value()?)),
                other => bail!("unknown option `{other}`\n\n{HELP}"),
            }
        }
        if o.rates.is_empty() || o.rates.iter().any(|r| !(*r >= 1.0 && *r <= 100_000.0)) {
            bail!("--rates: each rate must be between 1 and 100000 requests per second");
        }
        if o.latencies_ms.is_empty() || o.latencies_ms.iter().any(|l| *l > 10_000) {
            bail!("--latency-ms: each latency must be at most 10000 ms");
        }
        if !o.gateway && o.target.is_none() && !o.bare_proxy {
            bail!("--no-gateway needs --target or --bare-proxy: there would be nothing to measure but the mock");
        }
        if o.target.is_some() && o.mock_port.is_none() && o.mock_url.is_none() {
            o.mock_port = Some(18089);
        }
        Ok(Some(o))
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process killed when dropped, with its output in a log file.
struct Child {
    name: &'static str,
    child: std::process::Child,
    log: PathBuf,
}

impl Child {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Result<Child> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Child { name, child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until `addr` accepts connections.
    fn wait_listening(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before listening on {addr}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} does not listen on {addr} after 30 s:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn build_release(root: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("building: cargo build --release -p gateway -p gateway-mock");
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "gateway", "-p", "gateway-mock"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p gateway -p gateway-mock failed ({status}); fix the build or pass --no-build to use the binaries already built");
    }
    Ok(())
}

fn gateway_config(
    listen: SocketAddr,
    mock_base: &str,
    data_dir: &Path,
    workers: Option<usize>,
) -> String {
    format!(
        r#"# Generated by cargo xtask bench overhead.
[server]
listen = "{listen}"
data_dir = {data:?}
{workers}

[[providers]]
name = "mock"
kind = "openai"
base_url = "{mock_base}/v1"
models = ["gpt-4o-mini"]

{keys}
[[providers]]
name = "mock-anthropic"
kind = "anthropic"
base_url = "{mock_base}"
models = ["claude-3-5-haiku-latest"]

{keys}
[[routes]]
name = "bench"
targets = [{{ provider = "mock", model = "gpt-4o-mini" }}]

[[routes]]
name = "bench-anthropic"
targets = [{{ provider = "mock-anthropic", model = "claude-3-5-haiku-latest" }}]
"#,
        data = data_dir.display().to_string(),
        workers = workers.map_or(String::new(), |n| format!("worker_threads = {n}")),
        keys = "[[providers.keys]]\nname = \"key-1\"\nsecret = \"bench-key-1\"\n\n\
                [[providers.keys]]\nname = \"key-2\"\nsecret = \"bench-key-2\"\n",
    )
}

// ---------------------------------------------------------------------------------------------
// Figures

/// A latency distribution, microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Dist {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

impl Dist {
    fn of(mut ns: Vec<u64>) -> Dist {
        if ns.is_empty() {
            return Dist::default();
        }
        ns.sort_unstable();
        // Nearest rank.
        let at = |p: f64| {
            ns[((p * ns.len() as f64).ceil() as usize).clamp(1, ns.len()) - 1] as f64 / 1e3
        };
        Dist {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: ns[ns.len() - 1] as f64 / 1e3,
            mean: ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e3,
        }
    }

    fn minus(&self, o: &Dist) -> Dist {
        Dist {
            p50: self.p50 - o.p50,
            p90: self.p90 - o.p90,
            p99: self.p99 - o.p99,
            p999: self.p999 - o.p999,
            max: self.max - o.max,
            mean: self.mean - o.mean,
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    via: String,
    rate: f64,
    latency_ms: u64,
    stream: bool,
    scheduled: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    dropped: u64,
    /// Most requests in flight at once.
    peak_in_flight: usize,
    achieved_rps: f64,
    /// From the scheduled send time to the end of the body.
    latency_us: Dist,
    /// From the scheduled send time to the first body byte.
    ttfb_us: Dist,
    /// How late requests left, relative to their schedule.
    send_lag_us: Dist,
    loadgen_cpu_us_per_req: f64,
    loadgen_cores: f64,
    /// The proxy under test (this gateway or the target).
    proxy_cpu_us_per_req: Option<f64>,
    proxy_cores: Option<f64>,
    proxy_rss_kb: Option<u64>,
    proxy_peak_rss_kb: Option<u64>,
    mock_cpu_us_per_req: Option<f64>,
    /// CPU used during the run by processes other than the generator, the proxy and the mock
    /// (cores): other work on the machine, which skews the figures.
    other_cores: Option<f64>,
    /// CPU the hypervisor took for other guests during the run (cores).
    steal_cores: Option<f64>,
    warning: Option<String>,
}

/// The runs of one (upstream latency, streaming, rate) cell.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    latency_ms: u64,
    stream: bool,
    rate: f64,
    runs: Vec<RunStats>,
    /// `via` minus direct, per percentile (µs), for latency and time to first byte.
    added: BTreeMap<String, (Dist, Dist)>,
}

/// A whole `bench overhead` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    command: String,
    /// The API of the requests (`openai`, `anthropic`).
    api: Api,
    machine: Machine,
    clock_ticks_per_second: u64,
    duration_s: f64,
    warmup_s: f64,
    mock: String,
    cases: Vec<Case>,
    gateway_peak_rss_kb: Option<u64>,
    /// The gateway's resident set at the end, split: `RssAnon` (heap, stacks) and `RssFile`
    /// (pages mapped from files, the binary's code above all: shared with the page cache, and
    /// reclaimable).
    gateway_end_rss_anon_kb: Option<u64>,
    gateway_end_rss_file_kb: Option<u64>,
    /// Share of each process's CPU time spent in the kernel, over the whole run.
    kernel_share: BTreeMap<String, f64>,
    load_after: f64,
    warnings: Vec<String>,
}

/// A way to the mock: straight, through this gateway, or through the target.
struct Via {
    name: String,
    uri: String,
    model: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    pid: Option<Pid>,
}

struct Procs {
    own: Pid,
    proxy: Option<Pid>,
    mock: Option<Pid>,
}

fn ticks(p: Option<Pid>) -> Option<procfs::CpuTicks> {
    p.and_then(|p| procfs::cpu_ticks(p).ok())
}

#[allow(clippy::too_many_arguments)]
fn measure(
    rt: &tokio::runtime::Runtime,
    client: &load::HttpClient,
    target: &Target,
    plan: Plan,
    warmup: Duration,
    procs: &Procs,
    clk: u64,
    via: &str,
    latency_ms: u64,
) -> Result<RunStats> {
    if !warmup.is_zero() {
        load::run(
            rt,
            client,
            target,
            Plan {
                duration: warmup,
                ..plan
            },
        )?;
    }
    let machine0 = procfs::machine_ticks().ok();
    let own0 = ticks(Some(procs.own));
    let proxy0 = ticks(procs.proxy);
    let mock0 = ticks(procs.mock);
    let started = Instant::now();
    let out: Outcome = load::run(rt, client, target, plan)?;
    let elapsed = started.elapsed().as_secs_f64();
    let own1 = ticks(Some(procs.own));
    let machine1 = procfs::machine_ticks().ok();
    let proxy1 = ticks(procs.proxy);
    let mock1 = ticks(procs.mock);
    let ok = out.ok.len() as u64;
    let per_req = |a: Option<procfs::CpuTicks>, b: Option<procfs::CpuTicks>| -> Option<f64> {
        let (a, b) = (a?.total(), b?.total());
        let secs = b.saturating_sub(a) as f64 / clk as f64;
        Some(secs * 1e6 / (ok.max(1)) as f64)
    };
    let cores = |a: Option<procfs::CpuTicks>, b: Option<procfs::CpuTicks>| -> Option<f64> {
        let (a, b) = (a?.total(), b?.total());
        Some(b.saturating_sub(a) as f64 / clk as f64 / elapsed)
    };
    let ours = [
        cores(own0, own1),
        cores(proxy0, proxy1),
        cores(mock0, mock1),
    ]
    .iter()
    .flatten()
    .sum::<f64>();
    let (other_cores, steal_cores) = match (machine0, machine1) {
        (Some(a), Some(b)) => {
            let busy = b.busy.saturating_sub(a.busy) as f64 / clk as f64 / elapsed;
            let steal = b.steal.saturating_sub(a.steal) as f64 / clk as f64 / elapsed;
            (Some((busy - ours).max(0.0)), Some(steal))
        }
        _ => (None, None),
    };
    let wall = out
        .wall
        .as_secs_f64()
        .max(plan.duration.as_secs_f64() * 0.5);
    let achieved = ok as f64 / wall;
    let send_lag = Dist::of(out.send_lag.clone());
    let mut problems = Vec::new();
    if send_lag.p99 > 1000.0 {
        problems.push(format!(
            "sends lagged their schedule by {:.2} ms at p99 (the generator or the machine is saturated)",
            send_lag.p99 / 1e3
        ));
    }
    if achieved < 0.98 * plan.rate {
        problems.push(format!(
            "achieved {:.0} RPS, {:.1}% of the {:.0} asked",
            achieved,
            100.0 * achieved / plan.rate,
            plan.rate
        ));
    }
    if out.dropped > 0 {
        problems.push(format!(
            "{} sends dropped at the in-flight cap of {}",
            out.dropped, plan.max_in_flight
        ));
    }
    let warning = (!problems.is_empty()).then(|| problems.join("; "));
    let proxy_mem = |f: &str| procs.proxy.and_then(|p| procfs::status_kb(p, f).ok());
    Ok(RunStats {
        via: via.to_owned(),
        rate: plan.rate,
        latency_ms,
        stream: target.stream,
        scheduled: out.scheduled,
        ok,
        errors: out.errors,
        dropped: out.dropped,
        peak_in_flight: out.peak_in_flight,
        achieved_rps: achieved,
        latency_us: Dist::of(out.ok.iter().map(|s| s.latency).collect()),
        ttfb_us: Dist::of(out.ok.iter().map(|s| s.ttfb).collect()),
        send_lag_us: send_lag,
        loadgen_cpu_us_per_req: per_req(own0, own1).unwrap_or(0.0),
        loadgen_cores: cores(own0, own1).unwrap_or(0.0),
        proxy_cpu_us_per_req: per_req(proxy0, proxy1),
        proxy_cores: cores(proxy0, proxy1),
        proxy_rss_kb: proxy_mem("VmRSS"),
        proxy_peak_rss_kb: proxy_mem("VmHWM"),
        mock_cpu_us_per_req: per_req(mock0, mock1),
        other_cores,
        steal_cores,
        warning,
    })
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.digits$}"))
}

fn print_run(r: &RunStats) {
    let errors: u64 = r.errors.values().sum();
    eprintln!(
        "  {:>8} {:>6.0} rps{}: ok {:>6} err {:>4} drop {:>3} | p50 {:>8.1} p99 {:>8.1} p99.9 {:>8.1} max {:>8.1} µs{} | cpu/req proxy {} mock {} gen {:.1} µs | lag p99 {:.0} µs",
        r.via,
        r.achieved_rps,
        if r.stream { " stream" } else { "" },
        r.ok,
        errors,
        r.dropped,
        r.latency_us.p50,
        r.latency_us.p99,
        r.latency_us.p999,
        r.latency_us.max,
        if r.stream {
            format!(" | ttfb p50 {:.1} p99 {:.1}", r.ttfb_us.p50, r.ttfb_us.p99)
        } else {
            String::new()
        },
        opt(r.proxy_cpu_us_per_req, 1),
        opt(r.mock_cpu_us_per_req, 1),
        r.loadgen_cpu_us_per_req,
        r.send_lag_us.p99,
    );
    if let Some(w) = &r.warning {
        eprintln!(
            "  ***** WARNING ({} at {:.0} RPS): {w} *****",
            r.via, r.rate
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// Runs `bench overhead`.
pub fn main(root: &Path, opts: Options) -> Result<()> {
    let machine = Machine::read();
    let clk = procfs::clock_ticks_per_second()?;
    if opts.build && !crate::servers_built() && (opts.gateway || opts.mock_url.is_none()) {
        build_release(root)?;
    }
    if let Some(n) = opts.nice {
        // Before any thread or child exists, so all of them inherit it.
        let status = Command::new("renice")
            .args(["-n", &n.to_string(), "-p", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .context("running renice")?;
        if !status.success() {
            bail!("renice -n {n} failed ({status}): negative values need CAP_SYS_NICE");
        }
    }
    let bin_dir = crate::target_dir(root).join("release");
    let out_dir = opts
        .out
        .clone()
        .unwrap_or_else(|| crate::target_dir(root).join("bench"));
    let tmp = out_dir.join(format!("tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;

    // The mock upstream.
    let mut mock_child = None;
    let mock_root = match &opts.mock_url {
        Some(u) => u.clone(),
        None => {
            let port = match opts.mock_port {
                Some(p) => p,
                None => free_port()?,
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut child = Child::spawn(
                "gateway-mock",
                Command::new(bin_dir.join("gateway-mock")).args([
                    "--port",
                    &port.to_string(),
                    "--stream-chunks",
                    "50",
                    "--reply-bytes",
                    "500",
                    "--key",
                    "bench-key-1",
                    "--key",
                    "bench-key-2",
                ]),
                tmp.join("mock.log"),
            )?;
            child.wait_listening(addr)?;
            mock_child = Some(child);
            format!("http://{addr}")
        }
    };
    let mock_pid = mock_child.as_ref().map(Child::pid).or(opts.mock_pid);

    // The gateway.
    let mut gateway_child = None;
    let gateway_url = if opts.gateway {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = tmp.join("gateway.toml");
        std::fs::write(
            &config,
            gateway_config(addr, &mock_root, &tmp.join("data"), opts.gateway_workers),
        )?;
        let mut child = Child::spawn(
            "gateway-server",
            Command::new(bin_dir.join("gateway-server"))
                .arg("--config")
                .arg(&config),
            tmp.join("gateway.log"),
        )?;
        child.wait_listening(addr)?;
        gateway_child = Some(child);
        Some(format!("http://{addr}/v1"))
    } else {
        None
    };
    let gateway_pid = gateway_child.as_ref().map(Child::pid);

    // The floor: a proxy that only forwards.
    let mut bare_child = None;
    if opts.bare_proxy {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // As many runtime workers as the gateway gets (its default: half the cores, at least
        // one), so the floor is the same kind of runtime.
        let workers = opts.gateway_workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        });
        let mut child = Child::spawn(
            "bare-proxy",
            Command::new(std::env::current_exe().context("locating xtask")?).args([
                "bare-proxy",
                "--port",
                &port.to_string(),
                "--upstream",
                &mock_root,
                "--workers",
                &workers.to_string(),
            ]),
            tmp.join("bare-proxy.log"),
        )?;
        child.wait_listening(addr)?;
        bare_child = Some((child, addr));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.gen_threads)
        .enable_all()
        .build()?;
    let max_latency = opts.latencies_ms.iter().copied().max().unwrap_or(0);
    let max_rate = opts.rates.iter().copied().fold(0.0, f64::max);
    // Room for everything in flight at the highest rate and latency, four times over.
    let max_in_flight =
        ((max_rate * (max_latency as f64 / 1e3 + 0.02) * 4.0) as usize).clamp(256, 8192);
    let client = load::client(max_in_flight);

    let api = opts.api;
    let mut vias = vec![Via {
        name: "direct".to_owned(),
        uri: format!("{mock_root}/v1{}", api.path()),
        model: api.upstream_model().to_owned(),
        headers: api.headers(Some("bench-key-1"))?,
        pid: None,
    }];
    if let Some((child, addr)) = &bare_child {
        vias.push(Via {
            name: "bare-proxy".to_owned(),
            uri: format!("http://{addr}/v1{}", api.path()),
            model: api.upstream_model().to_owned(),
            headers: api.headers(Some("bench-key-1"))?,
            pid: Some(Pid::Of(child.pid())),
        });
    }
    if let Some(g) = &gateway_url {
        vias.push(Via {
            name: "gateway".to_owned(),
            uri: format!("{g}{}", api.path()),
            model: api.route().to_owned(),
            headers: api.headers(None)?,
            pid: gateway_pid.map(Pid::Of),
        });
    }
    if let Some(t) = &opts.target {
        vias.push(Via {
            name: opts.target_name.clone(),
            uri: format!("{t}{}", api.path()),
            model: opts.target_model.clone(),
            headers: api.headers(Some(opts.target_key.as_deref().unwrap_or("bench")))?,
            pid: opts.target_pid.map(Pid::Of),
        });
    }

    // Everything answers before the clock starts.
    for Via {
        name: via,
        uri,
        model,
        headers,
        ..
    } in &vias
    {
        let t = Target {
            uri: uri.parse().with_context(|| format!("bad url {uri}"))?,
            body: api.body(model, false),
            headers: headers.clone(),
            stream: false,
            end: api.end(),
            timeout: Duration::from_secs(10),
        };
        let is_target = opts.target.is_some() && *via == opts.target_name;
        if is_target {
            eprintln!(
                "\n  Point {via} at the mock upstream: {} base URL {mock_root}{}, API key bench-key-1, model {}.\n  Waiting up to {:.0} s for {uri} to answer...\n",
                match api {
                    Api::OpenAi => "OpenAI",
                    Api::Anthropic => "Anthropic",
                },
                if api == Api::OpenAi { "/v1" } else { "" },
                api.upstream_model(),
                opts.wait_target.as_secs_f64()
            );
        }
        let deadline = Instant::now()
            + if is_target {
                opts.wait_target
            } else {
                Duration::from_secs(10)
            };
        loop {
            match load::probe(&rt, &client, &t) {
                Ok((200, _)) => break,
                Ok((status, body)) if Instant::now() > deadline => bail!(
                    "{via} ({uri}) answers {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(500)])
                ),
                Err(e) if Instant::now() > deadline => {
                    bail!("{via} ({uri}) does not answer: {e:#}")
                }
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    let runs = opts.latencies_ms.len() * opts.stream.modes().len() * opts.rates.len() * vias.len();
    let per_run = opts.duration.as_secs_f64() + opts.warmup.as_secs_f64() + 0.3;
    eprintln!(
        "mock {mock_root}{}; {runs} runs of {:.0}+{:.0} s, about {:.0} s in all; load average now {:.2}",
        gateway_url
            .as_deref()
            .map(|g| format!(", gateway {g} (pid {})", gateway_pid.unwrap_or(0)))
            .unwrap_or_default(),
        opts.warmup.as_secs_f64(),
        opts.duration.as_secs_f64(),
        runs as f64 * per_run,
        procfs::load_average(),
    );

    let mut cases = Vec::new();
    let mut warnings = Vec::new();
    for &latency in &opts.latencies_ms {
        let faults = if latency == 0 {
            "{}".to_owned()
        } else {
            format!(r#"{{"latency_ms":{latency}}}"#)
        };
        let status = load::post_json(&rt, &client, &format!("{mock_root}/_mock/faults"), faults)?;
        if status != 200 {
            bail!("the mock refused its latency setting ({status})");
        }
        for &stream in opts.stream.modes() {
            for &rate in &opts.rates {
                eprintln!(
                    "upstream {latency} ms, {}, {rate:.0} RPS:",
                    if stream { "streaming" } else { "non-streaming" }
                );
                let plan = Plan {
                    rate,
                    duration: opts.duration,
                    max_in_flight,
                };
                let mut case = Case {
                    latency_ms: latency,
                    stream,
                    rate,
                    runs: Vec::new(),
                    added: BTreeMap::new(),
                };
                for Via {
                    name: via,
                    uri,
                    model,
                    headers,
                    pid,
                } in &vias
                {
                    let target = Target {
                        uri: uri.parse()?,
                        body: api.body(model, stream),
                        headers: headers.clone(),
                        stream,
                        end: api.end(),
                        timeout: Duration::from_secs(10),
                    };
                    let procs = Procs {
                        own: Pid::Own,
                        proxy: *pid,
                        mock: mock_pid.map(Pid::Of),
                    };
                    let r = measure(
                        &rt,
                        &client,
                        &target,
                        plan,
                        opts.warmup,
                        &procs,
                        clk,
                        via,
                        latency,
                    )?;
                    print_run(&r);
                    if let Some(w) = &r.warning {
                        warnings.push(format!(
                            "{via}, upstream {latency} ms, {}, {rate:.0} RPS: {w}",
                            if stream { "streaming" } else { "non-streaming" }
                        ));
                    }
                    case.runs.push(r);
                }
                if let Some(direct) = case.runs.first().cloned() {
                    for r in case.runs.iter().skip(1) {
                        let added = (
                            r.latency_us.minus(&direct.latency_us),
                            r.ttfb_us.minus(&direct.ttfb_us),
                        );
                        eprintln!(
                            "  {:>8} adds p50 {:+.1} p90 {:+.1} p99 {:+.1} µs{}",
                            r.via,
                            added.0.p50,
                            added.0.p90,
                            added.0.p99,
                            if stream {
                                format!(
                                    " (ttfb p50 {:+.1} p99 {:+.1} µs)",
                                    added.1.p50, added.1.p99
                                )
                            } else {
                                String::new()
                            }
                        );
                        case.added.insert(r.via.clone(), added);
                    }
                }
                cases.push(case);
            }
        }
    }
    let gateway_status =
        |field| gateway_pid.and_then(|p| procfs::status_kb(Pid::Of(p), field).ok());
    let gateway_peak_rss_kb = gateway_status("VmHWM");
    let gateway_end_rss_anon_kb = gateway_status("RssAnon");
    let gateway_end_rss_file_kb = gateway_status("RssFile");
    // Over a whole process life the user/kernel split is reliable (per-run deltas are not: the
    // kernel keeps the two monotonic by clamping).
    let mut kernel_share = BTreeMap::new();
    for (name, pid) in [
        ("gateway", gateway_pid.map(Pid::Of)),
        ("mock", mock_pid.map(Pid::Of)),
        ("generator", Some(Pid::Own)),
    ] {
        if let Some(t) = pid.and_then(|p| procfs::cpu_ticks(p).ok()) {
            if t.total() > 0 {
                kernel_share.insert(name.to_owned(), t.system as f64 / t.total() as f64);
            }
        }
    }
    let report = Report {
        command: opts.command.clone(),
        api: opts.api,
        machine,
        clock_ticks_per_second: clk,
        duration_s: opts.duration.as_secs_f64(),
        warmup_s: opts.warmup.as_secs_f64(),
        mock: mock_root.clone(),
        cases,
        gateway_peak_rss_kb,
        gateway_end_rss_anon_kb,
        gateway_end_rss_file_kb,
        kernel_share,
        load_after: procfs::load_average(),
        warnings,
    };
    drop(gateway_child);
    drop(mock_child);
    let _ = std::fs::remove_dir_all(&tmp);

    let md = markdown(&report);
    let json = serde_json::to_string_pretty(&report)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for name in [format!("overhead-{stamp}"), "overhead-latest".to_owned()] {
        std::fs::write(out_dir.join(format!("{name}.json")), &json)?;
        std::fs::write(out_dir.join(format!("{name}.md")), &md)?;
    }
    println!("{md}");
    eprintln!(
        "wrote {} and .md",
        out_dir.join(format!("overhead-{stamp}.json")).display()
    );
    if !report.warnings.is_empty() {
        eprintln!(
            "\n***** {} run(s) did not hold the requested load; see the warnings above *****",
            report.warnings.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Markdown

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1e3)
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "## Overhead: `{}`\n", r.command);
    let _ = writeln!(
        s,
        "Machine: {} × {}, {} MiB, Linux {}; load average {:.2} before, {:.2} after. Mock upstream, load generator and gateway on the same machine, 127.0.0.1, HTTP/1.1 keep-alive. {:.0} s measured after {:.0} s of warm-up per run; latency from the scheduled send time (open loop). {}\n",
        m.nproc, m.cpu, m.memory_mib, m.kernel, m.load_before, r.load_after, r.duration_s, r.warmup_s,
        match r.api {
            Api::OpenAi => "OpenAI chat completions, served by an OpenAI-format upstream (the pass-through path).",
            Api::Anthropic => "Anthropic messages, served by an Anthropic-format upstream (the Anthropic pass-through: answers and events read for usage and passed on as they came).",
        }
    );
    let _ = writeln!(
        s,
        "| upstream | stream | rate | via | achieved RPS | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | TTFB p50 ms | TTFB p99 ms | proxy CPU µs/req | mock CPU µs/req | generator CPU µs/req | other load (cores) | in flight (max) | proxy RSS MB |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for c in &r.cases {
        for run in &c.runs {
            let errors: u64 = run.errors.values().sum::<u64>() + run.dropped;
            let (t50, t99) = if c.stream {
                (ms(run.ttfb_us.p50), ms(run.ttfb_us.p99))
            } else {
                ("".to_owned(), "".to_owned())
            };
            let _ = writeln!(
                s,
                "| {} ms | {} | {:.0} | {} | {:.0}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} |",
                c.latency_ms,
                if c.stream { "yes" } else { "no" },
                c.rate,
                run.via,
                run.achieved_rps,
                if run.warning.is_some() { " ⚠" } else { "" },
                errors,
                ms(run.latency_us.p50),
                ms(run.latency_us.p90),
                ms(run.latency_us.p99),
                ms(run.latency_us.p999),
                ms(run.latency_us.max),
                t50,
                t99,
                opt(run.proxy_cpu_us_per_req, 1),
                opt(run.mock_cpu_us_per_req, 1),
                run.loadgen_cpu_us_per_req,
                opt(run.other_cores.zip(run.steal_cores).map(|(o, s)| o + s), 2),
                run.peak_in_flight,
                run.proxy_rss_kb
                    .map_or("–".to_owned(), |kb| format!("{:.1}", kb as f64 / 1024.0)),
            );
            if let Some((lat, ttfb)) = c.added.get(&run.via) {
                let _ = writeln!(
                    s,
                    "| | | | *{} adds (µs)* | | | {:+.0} | {:+.0} | {:+.0} | {:+.0} | {:+.0} | {} | {} | | | | | | |",
                    run.via,
                    lat.p50,
                    lat.p90,
                    lat.p99,
                    lat.p999,
                    lat.max,
                    if c.stream { format!("{:+.0}", ttfb.p50) } else { String::new() },
                    if c.stream { format!("{:+.0}", ttfb.p99) } else { String::new() },
                );
            }
        }
    }
    if let Some(kb) = r.gateway_peak_rss_kb {
        let _ = writeln!(
            s,
            "\nGateway peak resident set (VmHWM) over the whole run: {:.1} MB.",
            kb as f64 / 1024.0
        );
    }
    if let (Some(anon), Some(file)) = (r.gateway_end_rss_anon_kb, r.gateway_end_rss_file_kb) {
        let _ = writeln!(
            s,
            "At the end: {:.1} MB anonymous (heap, stacks) and {:.1} MB mapped from files (the \
             binary's code, shared with the page cache).",
            anon as f64 / 1024.0,
            file as f64 / 1024.0
        );
    }
    if !r.kernel_share.is_empty() {
        let shares: Vec<String> = r
            .kernel_share
            .iter()
            .map(|(k, v)| format!("{k} {:.0}%", 100.0 * v))
            .collect();
        let _ = writeln!(
            s,
            "\nShare of CPU time spent in the kernel over the whole run (syscalls, the loopback TCP stack): {}.",
            shares.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "\n*Other load* is CPU used by every other process on the machine during the run, plus time the hypervisor stole; above a few tenths of a core the run shared the machine."
    );
    s.push_str(&targets(r));
    if !r.warnings.is_empty() {
        let _ = writeln!(
            s,
            "\n**The load was not held in {} run(s):**\n",
            r.warnings.len()
        );
        for w in &r.warnings {
            let _ = writeln!(s, "- {w}");
        }
    }
    s
}

/// The performance targets, checked against the run at the highest rate and lowest latency.
fn targets(r: &Report) -> String {
    let mut s = String::new();
    let Some(rate) = r.cases.iter().map(|c| c.rate).reduce(f64::max) else {
        return s;
    };
    let Some(lat) = r.cases.iter().map(|c| c.latency_ms).min() else {
        return s;
    };
    let find = |stream: bool| {
        r.cases
            .iter()
            .find(|c| c.rate == rate && c.latency_ms == lat && c.stream == stream)
    };
    let run_of = |c: &Case, via: &str| c.runs.iter().find(|x| x.via == via).cloned();
    let mut rows: Vec<(String, String, String, bool)> = Vec::new();
    let errors_at_rate: u64 = r
        .cases
        .iter()
        .filter(|c| c.rate == rate)
        .flat_map(|c| c.runs.iter().filter(|x| x.via == "gateway"))
        .map(|x| x.errors.values().sum::<u64>() + x.dropped)
        .sum();
    let any_gateway = r
        .cases
        .iter()
        .any(|c| c.runs.iter().any(|x| x.via == "gateway"));
    if !any_gateway {
        return s;
    }
    rows.push((
        format!("{rate:.0} RPS through the gateway, errors (all runs at this rate)"),
        "0".to_owned(),
        errors_at_rate.to_string(),
        errors_at_rate == 0,
    ));
    if let Some(c) = find(false) {
        if let (Some(g), Some(d), Some((added, _))) = (
            run_of(c, "gateway"),
            run_of(c, "direct"),
            c.added.get("gateway"),
        ) {
            rows.push((
                format!("added p50 latency ({lat} ms upstream, {rate:.0} RPS)"),
                "≤ 50 µs".to_owned(),
                format!("{:+.0} µs", added.p50),
                added.p50 <= 50.0,
            ));
            rows.push((
                format!("p99 through the gateway ({lat} ms upstream, {rate:.0} RPS)"),
                "≤ 1 ms".to_owned(),
                format!(
                    "{} ms (direct {} ms)",
                    ms(g.latency_us.p99),
                    ms(d.latency_us.p99)
                ),
                g.latency_us.p99 <= 1000.0,
            ));
            if let (Some(gc), Some(mc)) = (g.proxy_cpu_us_per_req, g.mock_cpu_us_per_req) {
                rows.push((
                    "gateway CPU per request vs the mock's".to_owned(),
                    "≤ 2×".to_owned(),
                    format!("{gc:.1} µs vs {mc:.1} µs = {:.2}×", gc / mc.max(1e-9)),
                    gc <= 2.0 * mc,
                ));
            }
        }
    }
    // VmHWM is a peak over the process's life: read after the last run at the lowest latency
    // (run first), it is the peak with few requests in flight.
    let low_latency_peak = r
        .cases
        .iter()
        .filter(|c| c.latency_ms == lat)
        .flat_map(|c| c.runs.iter().filter(|x| x.via == "gateway"))
        .filter_map(|x| x.proxy_peak_rss_kb)
        .max();
    if let Some(kb) = low_latency_peak {
        rows.push((
            format!("gateway peak RSS (VmHWM) over the {lat} ms upstream runs"),
            "≤ 30 MB".to_owned(),
            format!("{:.1} MB", kb as f64 / 1024.0),
            kb as f64 / 1024.0 <= 30.0,
        ));
    }
    if let (Some(kb), Some(max_lat)) = (
        r.gateway_peak_rss_kb,
        r.cases
            .iter()
            .map(|c| c.latency_ms)
            .max()
            .filter(|m| *m != lat),
    ) {
        rows.push((
            format!("gateway peak RSS (VmHWM) over the whole run, up to {max_lat} ms upstream"),
            "≤ 30 MB".to_owned(),
            format!("{:.1} MB", kb as f64 / 1024.0),
            kb as f64 / 1024.0 <= 30.0,
        ));
    }
    if let Some(c) = find(true) {
        if let Some((_, ttfb)) = c.added.get("gateway") {
            rows.push((
                format!(
                    "added time to first byte, streaming p50 ({lat} ms upstream, {rate:.0} RPS)"
                ),
                "≤ 100 µs".to_owned(),
                format!("{:+.0} µs (p99 {:+.0} µs)", ttfb.p50, ttfb.p99),
                ttfb.p50 <= 100.0,
            ));
        }
    }
    let _ = writeln!(
        s,
        "\n### Targets\n\n| target | goal | measured | |\n|---|---|---|---|"
    );
    for (what, goal, got, ok) in rows {
        let _ = writeln!(
            s,
            "| {what} | {goal} | {got} | {} |",
            if ok { "met" } else { "**missed**" }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated configuration is one the server accepts, with a route for each API, and each
    /// API's body is about 1 KB that the server's decoder for that API reads as asked.
    #[test]
    fn the_generated_config_and_bodies_are_what_the_server_reads() {
        let text = gateway_config(
            SocketAddr::from(([127, 0, 0, 1], 18090)),
            "http://127.0.0.1:18089",
            Path::new("/tmp/bench-data"),
            Some(1),
        );
        let config = gateway_server::Config::from_toml(&text).expect("the server reads it");
        assert_eq!(config.providers.len(), 2);
        for p in &config.providers {
            let keys: Vec<&str> = p.keys.iter().map(|k| k.name.as_str()).collect();
            assert_eq!(keys, ["key-1", "key-2"], "{}", p.name);
        }
        for api in [Api::OpenAi, Api::Anthropic] {
            assert!(
                config.routes.iter().any(|r| r.name == api.route()),
                "a route for {api:?}"
            );
            for stream in [false, true] {
                let body = api.body(api.route(), stream);
                assert!((900..1300).contains(&body.len()), "{}", body.len());
                let request = match api {
                    Api::OpenAi => gateway_server::openai::decode_chat(&body),
                    Api::Anthropic => gateway_server::anthropic::decode_request(&body),
                }
                .expect("the server decodes it");
                assert_eq!(request.model, api.route());
                assert_eq!(request.stream, stream);
            }
        }
    }
}
