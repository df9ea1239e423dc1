//! Project automation, the cargo-xtask way: `cargo xtask bench` (the alias lives in
//! `.cargo/config.toml`).
//!
//! - `bench overhead`: latency and CPU the release gateway adds at a fixed arrival rate, against
//!   a mock upstream, with an open-loop load generator ([`load`]).
//! - `bench scenarios`: balancing quality of every strategy on scripted provider trouble, in the
//!   deterministic simulator of `gateway_core::sim`.
//! - `bench micro`: the criterion benchmarks.
//!
//! See `docs/benchmarks.md` for what the figures mean and a recorded run.

mod bare_proxy;
mod load;
mod micro;
mod overhead;
mod procfs;
mod scenarios;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const HELP: &str = "cargo xtask <COMMAND>

COMMANDS:
    bench               scenarios, then overhead with default options
    bench overhead      added latency, CPU and memory of the release gateway under open-loop load
    bench scenarios     balancing quality of every strategy on simulated provider trouble
    bench micro         criterion micro-benchmarks (pick, convert, sse)
    bare-proxy          a minimal forwarding proxy, the floor `bench overhead --bare-proxy` measures

`cargo xtask bench <COMMAND> --help` lists each command's options.
";

/// The workspace root (xtask's parent directory).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_relative() { root.join(p) } else { p })
        .unwrap_or_else(|| root.join("target"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => {
            print!("{HELP}");
            Ok(())
        }
        Some("bench") => bench(&root, &args[1..]),
        Some("bare-proxy") => bare_proxy::main(&args[1..]),
        Some(other) => bail!("unknown command `{other}`\n\n{HELP}"),
    }
}

/// Set in the environment of a release xtask started by [`rerun_in_release`].
const IN_RELEASE: &str = "XTASK_IN_RELEASE";

/// The load generator must not be the bottleneck, and the `cargo xtask` alias builds the dev
/// profile: an unoptimised xtask builds itself (and, unless `--no-build`, the gateway and the
/// mock) in release and runs that build with the same arguments, then exits with its status.
fn rerun_in_release(root: &Path, args: &[String]) -> Result<()> {
    if !cfg!(debug_assertions)
        || std::env::var_os(IN_RELEASE).is_some()
        || args.iter().any(|a| a == "-h" || a == "--help")
    {
        return Ok(());
    }
    let mut packages = vec!["xtask"];
    if !args.iter().any(|a| a == "--no-build") {
        packages.extend(["gateway", "gateway-mock"]);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.current_dir(root).args(["build", "--release"]);
    for p in &packages {
        build.args(["-p", p]);
    }
    eprintln!(
        "building: cargo build --release -p {}",
        packages.join(" -p ")
    );
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed ({status}); fix the build, or pass --no-build to use the gateway and mock already in target/release");
    }
    let exe = target_dir(root).join("release").join("xtask");
    let status = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(IN_RELEASE, "1")
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Whether the gateway and the mock were built by [`rerun_in_release`] already.
pub(crate) fn servers_built() -> bool {
    std::env::var_os(IN_RELEASE).is_some()
}

fn bench(root: &Path, args: &[String]) -> Result<()> {
    if matches!(args.first().map(String::as_str), None | Some("overhead")) {
        rerun_in_release(root, args)?;
    }
    match args.first().map(String::as_str) {
        Some("overhead") => match overhead::Options::parse(&args[1..])? {
            Some(opts) => overhead::main(root, opts),
            None => Ok(()),
        },
        Some("scenarios") => scenarios::main(root, &args[1..]),
        Some("micro") => micro::main(root, &args[1..]),
        None => {
            scenarios::main(root, &[])?;
            match overhead::Options::parse(&[])? {
                Some(opts) => overhead::main(root, opts),
                None => Ok(()),
            }
        }
        Some("-h" | "--help") => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown bench `{other}`\n\n{HELP}"),
    }
}
