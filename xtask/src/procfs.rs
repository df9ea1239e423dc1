//! What the benchmarks read from `/proc`: CPU time and memory of a process, and the machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// A process to read: ourselves or a child by pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    /// The xtask process (the load generator).
    Own,
    /// Another process.
    Of(u32),
}

impl Pid {
    fn dir(self) -> PathBuf {
        match self {
            Pid::Own => PathBuf::from("/proc/self"),
            Pid::Of(p) => PathBuf::from(format!("/proc/{p}")),
        }
    }
}

/// User and system CPU time of a process (all its threads), in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    /// In user space.
    pub user: u64,
    /// In the kernel on the process's behalf (syscalls, the loopback network stack).
    pub system: u64,
}

impl CpuTicks {
    /// Both.
    pub fn total(self) -> u64 {
        self.user + self.system
    }
}

/// CPU time of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: Pid) -> Result<CpuTicks> {
    let path = pid.dir().join("stat");
    let stat =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{}: no `)`", path.display()))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let num = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("{}: too few fields", path.display()))?
            .parse::<u64>()
            .with_context(|| format!("{}: field {} is not a number", path.display(), i + 3))
    };
    Ok(CpuTicks {
        user: num(11)?,
        system: num(12)?,
    })
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM` is the peak resident set, `VmRSS` the current).
pub fn status_kb(pid: Pid, field: &str) -> Result<u64> {
    let path = pid.dir().join("status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let n = v.trim().trim_end_matches("kB").trim();
            return n
                .parse()
                .with_context(|| format!("{}: {field} is `{v}`", path.display()));
        }
    }
    bail!("{}: no {field}", path.display())
}

/// Clock ticks per second for `/proc/<pid>/stat`: `getconf CLK_TCK`, or 100 checked by burning
/// CPU for a known time.
pub fn clock_ticks_per_second() -> Result<u64> {
    if let Ok(out) = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
    {
        if let Some(n) = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
        {
            return Ok(n);
        }
    }
    // No getconf: assume the usual 100 and verify it against 300 ms of busy work.
    let before = cpu_ticks(Pid::Own)?.total();
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_millis(300) {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    let ticks = cpu_ticks(Pid::Own)?.total() - before;
    if !(20..=40).contains(&ticks) {
        bail!("cannot tell the clock tick rate: no getconf, and 300 ms of CPU counted {ticks} ticks (expected ~30 at 100 Hz)");
    }
    Ok(100)
}

/// Machine-wide CPU time from `/proc/stat`, in clock ticks (all CPUs).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineTicks {
    /// Not idle: every process on the machine, ours included.
    pub busy: u64,
    /// Taken by the hypervisor for other guests.
    pub steal: u64,
}

/// Reads the `cpu` line of `/proc/stat`.
pub fn machine_ticks() -> Result<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat: no cpu line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    Ok(MachineTicks {
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        steal: at(7),
    })
}

/// The machine a benchmark ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available to us.
    pub nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu: String,
    /// `MemTotal`, MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// 1-minute load average before the run (other work on the machine).
    pub load_before: f64,
}

impl Machine {
    /// Reads it now.
    pub fn read() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            memory_mib,
            kernel,
            load_before: load_average(),
        }
    }
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
