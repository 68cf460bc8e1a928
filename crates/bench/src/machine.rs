//! What the numbers were measured on.

use std::process::Command;

use serde::{Deserialize, Serialize};

/// The machine and the software under test.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// Online CPUs (`nproc`).
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// MemTotal from /proc/meminfo, bytes.
    pub memory_bytes: u64,
    /// `qemu-system-x86_64 --version`, first line.
    pub qemu: String,
    /// Debian version of the package holding the C backend.
    pub qemu_system_gui: String,
    /// /proc/loadavg when the run started (the machine is shared).
    pub loadavg_start: String,
    /// /proc/loadavg when the run ended.
    pub loadavg_end: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The load average now.
pub fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Machine {
    /// Describes this machine.
    pub fn probe() -> Machine {
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let memory_bytes = read("/proc/meminfo")
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix("MemTotal:")?;
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024);
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            memory_bytes,
            qemu: output("qemu-system-x86_64", &["--version"]),
            qemu_system_gui: output("dpkg-query", &["-W", "-f=${Version}", "qemu-system-gui"]),
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }

    /// One line for captions.
    pub fn summary(&self) -> String {
        format!(
            "{} CPUs ({}), {:.0} GiB, Linux {}, {}",
            self.nproc,
            self.cpu,
            self.memory_bytes as f64 / (1u64 << 30) as f64,
            self.kernel,
            self.qemu
        )
    }
}
