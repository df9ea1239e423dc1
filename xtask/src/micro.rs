//! `cargo xtask bench micro`: the criterion benchmarks of gateway-core and gateway-providers.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs `cargo bench -p gateway-core -p gateway-providers`, passing `args` to the benchmarks
/// (`--quick`, a name filter, `--save-baseline NAME`...).
pub fn main(root: &Path, args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "cargo xtask bench micro [CRITERION ARGS]\n\nRuns `cargo bench -p gateway-core -p gateway-providers -- ARGS`: pick (strategies), convert\n(request/response conversion per provider family) and sse (SSE and eventstream parsing).\nExamples: `cargo xtask bench micro --quick`, `cargo xtask bench micro convert`."
        );
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["bench", "-p", "gateway-core", "-p", "gateway-providers"]);
    // Only the criterion targets: the libraries' own unit tests are not benchmarks.
    cmd.args(["--bench", "pick", "--bench", "convert", "--bench", "sse"]);
    let args: Vec<&String> = args.iter().filter(|a| *a != "--").collect();
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    eprintln!("running: {cmd:?}");
    let status = cmd.status().context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed ({status})");
    }
    Ok(())
}
