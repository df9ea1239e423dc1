//! `cargo xtask bench scenarios`: balancing quality, every strategy on the same arrivals.
//!
//! Each scenario is replayed with [`gateway_core::sim`] on paused tokio time (minutes of traffic
//! in a fraction of a second, the same result on every run) once per strategy, with the same
//! seed, so the only difference between rows is the strategy.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gateway_core::engine::RetryConfig;
use gateway_core::sim::{
    self, Mix, Phase, Scenario, SimKey, SimProviderSpec, SimReport, TrafficClass,
};
use gateway_core::StrategyKind;
use serde::Serialize;

const HELP: &str = "cargo xtask bench scenarios [OPTIONS]

Replays scripted scenarios against simulated providers (paused time) with every strategy.

OPTIONS:
    --only NAME[,NAME]  key-limits, degradation, outage, noisy-neighbour (default: all)
    --seed N            seed of the simulated randomness (default 7)
    --out DIR           where results go (default target/bench)
";

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// The gateway's default retry settings (docs/configuration.md), so the figures are what a user
/// gets without tuning.
fn default_retry() -> RetryConfig {
    RetryConfig {
        backoff_base: MS(50),
        backoff_max: S(2),
        max_attempts: 8,
        request_timeout: S(600),
    }
}

fn key(name: &str, rpm: Option<u64>) -> SimKey {
    SimKey {
        name: name.to_owned(),
        rpm,
        // The limits are learned from the providers' rate-limit headers, not configured.
        rpm_known: false,
        weight: 1,
    }
}

fn steady(latency: Duration) -> Vec<Phase> {
    vec![Phase::healthy(S(0), latency)]
}

fn base(
    name: &str,
    providers: Vec<SimProviderSpec>,
    rps: f64,
    duration: Duration,
    bucket: Duration,
) -> Scenario {
    Scenario {
        name: name.to_owned(),
        providers,
        rps,
        duration,
        retry: default_retry(),
        max_retries: 2,
        timeout: S(60),
        bucket,
    }
}

/// A scenario, its traffic and what it is about.
struct Case {
    scenario: Scenario,
    mix: Mix,
    story: &'static str,
    /// Also run adaptive without batch priority, for comparison.
    priority_off_row: bool,
}

fn one_class(rps: f64, duration: Duration) -> Mix {
    Mix {
        classes: vec![TrafficClass {
            name: "all".to_owned(),
            rps,
            from: Duration::ZERO,
            until: duration,
            batch: false,
        }],
        batch_headroom: None,
    }
}

fn key_limits() -> Case {
    let scenario = base(
        "key-limits",
        vec![SimProviderSpec {
            name: "openai".to_owned(),
            keys: vec![
                key("small", Some(60)),
                key("medium", Some(120)),
                key("large", Some(300)),
            ],
            phases: steady(MS(300)),
            weight: 1,
        }],
        7.0,
        S(300),
        S(60),
    );
    let mix = one_class(scenario.rps, scenario.duration);
    Case {
        scenario,
        mix,
        story: "One provider, three keys of equal weight whose per-minute request limits differ: 60, 120 and 300 rpm (480 in all), learned from the providers' rate-limit headers, not configured. Demand is 7 requests per second (420 rpm, 87.5% of the capacity) for 5 minutes; answers take 300 ms. Each key is a token bucket refilled continuously, as OpenAI and Anthropic describe theirs: the headers say how many requests remain and when the bucket is full again; a 429 says when one request is allowed again.",
        priority_off_row: false,
    }
}

fn degradation() -> Case {
    let scenario = base(
        "degradation",
        vec![
            SimProviderSpec {
                name: "primary".to_owned(),
                keys: vec![key("a", None), key("b", None)],
                phases: vec![
                    Phase::healthy(S(0), MS(300)),
                    Phase::healthy(S(60), MS(3000)),
                    Phase {
                        at: S(150),
                        latency: MS(300),
                        error_rate: 0.5,
                        down: false,
                    },
                    Phase::healthy(S(240), MS(300)),
                ],
                weight: 1,
            },
            SimProviderSpec {
                name: "secondary".to_owned(),
                keys: vec![key("c", None)],
                phases: steady(MS(400)),
                weight: 1,
            },
        ],
        10.0,
        S(300),
        S(30),
    );
    let mix = one_class(scenario.rps, scenario.duration);
    Case {
        scenario,
        mix,
        story: "Two providers of equal weight, no rate limits: primary (two keys, 300 ms) and secondary (one key, 400 ms). From 60 s primary's latency climbs tenfold to 3 s; from 150 s it is fast again but answers 50% of requests with a 500; from 240 s it is healthy. 10 requests per second for 5 minutes.",
        priority_off_row: false,
    }
}

fn outage() -> Case {
    let scenario = base(
        "outage",
        vec![
            SimProviderSpec {
                name: "primary".to_owned(),
                keys: vec![key("a", None), key("b", None)],
                phases: vec![
                    Phase::healthy(S(0), MS(300)),
                    Phase {
                        at: S(60),
                        latency: MS(300),
                        error_rate: 0.0,
                        down: true,
                    },
                    Phase::healthy(S(150), MS(300)),
                ],
                weight: 3,
            },
            SimProviderSpec {
                name: "secondary".to_owned(),
                keys: vec![key("c", None)],
                phases: steady(MS(400)),
                weight: 1,
            },
        ],
        10.0,
        S(240),
        S(30),
    );
    let mix = one_class(scenario.rps, scenario.duration);
    Case {
        scenario,
        mix,
        story: "Primary (two keys, 300 ms, route weight 3) and secondary (one key, 400 ms, weight 1). Primary refuses connections from 60 s to 150 s, then returns. 10 requests per second for 4 minutes.",
        priority_off_row: false,
    }
}

fn noisy_neighbour() -> Case {
    let scenario = base(
        "noisy-neighbour",
        vec![SimProviderSpec {
            name: "openai".to_owned(),
            keys: vec![key("k1", Some(300)), key("k2", Some(300))],
            phases: steady(MS(300)),
            weight: 1,
        }],
        0.0,
        S(300),
        S(30),
    );
    let mix = Mix {
        classes: vec![
            TrafficClass {
                name: "interactive".to_owned(),
                rps: 4.0,
                from: Duration::ZERO,
                until: S(300),
                batch: false,
            },
            TrafficClass {
                name: "batch".to_owned(),
                rps: 12.0,
                from: S(60),
                until: S(240),
                batch: true,
            },
        ],
        batch_headroom: Some(0.2),
    };
    Case {
        scenario,
        mix,
        story: "One provider, two keys of 300 rpm each (10 requests per second in all, learned from headers). An interactive virtual key sends 4 requests per second for 5 minutes; a batch virtual key floods at 12 per second from 60 s to 240 s, so demand (16/s) exceeds capacity. Batch arrivals are held back (answered 429 before routing) while the balancer's best headroom for the route is below 0.2, as the gateway's governance does for `priority = \"batch\"` keys with the default `governance.batch_headroom = 0.2`.",
        priority_off_row: true,
    }
}

fn all_cases() -> Vec<Case> {
    vec![key_limits(), degradation(), outage(), noisy_neighbour()]
}

/// One scenario's results.
#[derive(Debug, Serialize)]
struct ScenarioResult {
    name: String,
    story: String,
    reports: Vec<(String, SimReport)>,
    /// The same runs with `max_attempts = 1`: what the strategy achieves without failover.
    no_failover: Vec<(String, SimReport)>,
}

/// Runs `bench scenarios`.
pub fn main(root: &Path, args: &[String]) -> Result<()> {
    let mut only: Option<Vec<String>> = None;
    let mut seed = 7u64;
    let mut out: Option<std::path::PathBuf> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            "--only" => only = Some(value()?.split(',').map(str::to_owned).collect()),
            "--seed" => seed = value()?.parse().context("--seed")?,
            "--out" => out = Some(value()?.into()),
            other => bail!("unknown option `{other}`\n\n{HELP}"),
        }
    }
    let mut cases = all_cases();
    if let Some(only) = &only {
        for o in only {
            if !cases.iter().any(|c| c.scenario.name == *o) {
                bail!("--only: unknown scenario `{o}` (key-limits, degradation, outage, noisy-neighbour)");
            }
        }
        cases.retain(|c| only.contains(&c.scenario.name));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let mut results = Vec::new();
    for case in &cases {
        let single = Scenario {
            retry: RetryConfig {
                max_attempts: 1,
                ..case.scenario.retry
            },
            ..case.scenario.clone()
        };
        let mut runs: [Vec<(String, SimReport)>; 2] = [Vec::new(), Vec::new()];
        for (scenario, out) in [&case.scenario, &single].into_iter().zip(runs.iter_mut()) {
            let run = |mix: &Mix, kind: StrategyKind| {
                rt.block_on(sim::run_mix(scenario, mix, kind, seed))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", scenario.name))
            };
            for kind in StrategyKind::ALL {
                out.push((kind.as_str().to_owned(), run(&case.mix, kind)?));
            }
            if case.priority_off_row {
                let mix = Mix {
                    batch_headroom: None,
                    ..case.mix.clone()
                };
                out.push((
                    "adaptive, no priority".to_owned(),
                    run(&mix, StrategyKind::Adaptive)?,
                ));
            }
        }
        let [reports, no_failover] = runs;
        results.push(ScenarioResult {
            name: case.scenario.name.clone(),
            story: case.story.to_owned(),
            reports,
            no_failover,
        });
    }
    let md = markdown(&results, seed);
    println!("{md}");
    let out_dir = out.unwrap_or_else(|| crate::target_dir(root).join("bench"));
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("scenarios-latest.md"), &md)?;
    std::fs::write(
        out_dir.join("scenarios-latest.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    eprintln!(
        "wrote {}",
        out_dir.join("scenarios-latest.{md,json}").display()
    );
    Ok(())
}

fn pct(x: f64) -> String {
    if x >= 0.99995 {
        "100%".to_owned()
    } else {
        format!("{:.2}%", 100.0 * x)
    }
}

fn markdown(results: &[ScenarioResult], seed: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Balancing scenarios (`cargo xtask bench scenarios`, seed {seed})\n\nSimulated providers on paused time; every strategy sees the same arrivals. Engine settings are the gateway's defaults: `max_attempts` 8, `max_retries` 2, backoff 50 ms to 2 s, per-attempt timeout 60 s, health defaults. Latency is what the client saw, retries and backoff included. The last column replays the same arrivals with `max_attempts = 1`: what the strategy's choice alone achieves, before the engine's failover repairs it.\n"
    );
    for r in results {
        let _ = writeln!(s, "### {}\n\n{}\n", r.name, r.story);
        let _ = writeln!(
            s,
            "| strategy | success | client 429 | client 5xx | p50 ms | p99 ms | max ms | attempts/req | upstream 429 | upstream errors | success without failover |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for ((name, rep), (_, single)) in r.reports.iter().zip(&r.no_failover) {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {} | {} |",
                pct(rep.success_rate()),
                rep.client_429,
                rep.client_5xx,
                rep.p50_ms,
                rep.p99_ms,
                rep.max_ms,
                rep.attempts_per_request(),
                rep.upstream_429,
                rep.upstream_errors,
                pct(single.success_rate()),
            );
        }
        if r.reports.iter().any(|(_, rep)| rep.classes.len() > 1) {
            let _ = writeln!(
                s,
                "\nPer class:\n\n| strategy | class | arrivals | held back | success (of arrivals) | success (of routed) | client 429 | client 5xx | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|---|"
            );
            for (name, rep) in &r.reports {
                for c in &rep.classes {
                    let _ = writeln!(
                        s,
                        "| {name} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
                        c.name,
                        c.requests,
                        c.held_back,
                        pct(c.success_rate()),
                        pct(c.routed_success_rate()),
                        c.client_429,
                        c.client_5xx,
                        c.p50_ms,
                        c.p99_ms,
                    );
                }
            }
        }
        s.push_str(&share_table(r));
        s.push('\n');
    }
    s
}

/// Share of successful requests per key in each time bucket, one column per strategy.
fn share_table(r: &ScenarioResult) -> String {
    let mut s = String::new();
    let keys: BTreeSet<String> = r
        .reports
        .iter()
        .flat_map(|(_, rep)| rep.share_over_time.iter().flat_map(|b| b.keys().cloned()))
        .collect();
    let keys: Vec<String> = keys.into_iter().collect();
    let Some((_, first)) = r.reports.first() else {
        return s;
    };
    let _ = writeln!(
        s,
        "\nShare of successful requests per key (`{}`, in %) and client-visible failures (✗) per {:.0} s bucket:\n",
        keys.join(" / "),
        first.bucket_secs
    );
    let _ = write!(s, "| t (s) |");
    for (name, _) in &r.reports {
        let _ = write!(s, " {name} |");
    }
    let _ = write!(s, "\n|---|");
    for _ in &r.reports {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    for b in 0..first.share_over_time.len() {
        let from = b as f64 * first.bucket_secs;
        let _ = write!(s, "| {:.0}–{:.0} |", from, from + first.bucket_secs);
        for (_, rep) in &r.reports {
            let bucket = &rep.share_over_time[b];
            let total: u64 = bucket.values().sum();
            let shares: Vec<String> = keys
                .iter()
                .map(|k| {
                    let n = bucket.get(k).copied().unwrap_or(0);
                    if total == 0 {
                        "0".to_owned()
                    } else {
                        format!("{:.0}", 100.0 * n as f64 / total as f64)
                    }
                })
                .collect();
            let fails = rep.failures_over_time.get(b).copied().unwrap_or(0);
            let _ = write!(
                s,
                " {}{} |",
                shares.join("/"),
                if fails > 0 {
                    format!(" ✗{fails}")
                } else {
                    String::new()
                }
            );
        }
        s.push('\n');
    }
    s
}
