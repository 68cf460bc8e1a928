//! Starting a backend process on a fresh socket, and connecting the
//! in-process frontend to it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gpuswap_frontend::{FrontendConfig, GpuFrontend, RegionSpec};
use gpuswap_testkit::{Process, ScratchDir};

/// Where Debian's `qemu-system-gui` installs QEMU's C backend.
pub const C_BACKEND: &str = "/usr/lib/qemu/vhost-user-gpu";

/// Which backend a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `gpuswap-daemon`.
    Gpuswap,
    /// `gpuswap-daemon --poll-us 50`: what adaptive polling buys, in the
    /// same run.
    GpuswapPolling,
    /// QEMU's `vhost-user-gpu`.
    QemuC,
}

impl Kind {
    /// Short name used in the JSON and the tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Gpuswap => "gpuswap",
            Kind::GpuswapPolling => "gpuswap-poll50",
            Kind::QemuC => "qemu-c",
        }
    }

    /// Human name.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Gpuswap => "gpuswap",
            Kind::GpuswapPolling => "gpuswap --poll-us 50",
            Kind::QemuC => "QEMU C backend",
        }
    }
}

/// A backend process listening on its own socket in its own temp dir;
/// killed (and the dir removed) on drop.
pub struct Backend {
    /// Which backend.
    pub kind: Kind,
    /// The program.
    pub binary: PathBuf,
    /// Its vhost-user socket.
    pub socket: PathBuf,
    // Dropped in this order: the process is gone before its directory.
    process: Process,
    _dir: ScratchDir,
}

impl Backend {
    /// Starts `binary` as backend `kind` on a fresh socket.
    pub fn spawn(kind: Kind, binary: &Path) -> Result<Backend, String> {
        if !binary.exists() {
            return Err(format!("{} not found", binary.display()));
        }
        let dir =
            ScratchDir::new("gpuswap-bench", kind.name()).map_err(|e| format!("temp dir: {e}"))?;
        let socket = dir.join("gpu.sock");
        let log = dir.join("backend.log");
        let mut cmd = Command::new(binary);
        match kind {
            Kind::Gpuswap | Kind::GpuswapPolling => {
                // Warnings only: per-request logging would be measured too.
                cmd.arg("--socket-path").arg(&socket).arg("--once");
                cmd.env("RUST_LOG", "warn");
                if kind == Kind::GpuswapPolling {
                    cmd.args(["--poll-us", "50"]);
                }
            }
            Kind::QemuC => {
                cmd.arg(format!("--socket-path={}", socket.display()));
                cmd.env("G_MESSAGES_DEBUG", "");
            }
        }
        let process = Process::spawn(&mut cmd, &log)
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        Ok(Backend {
            kind,
            binary: binary.to_path_buf(),
            socket,
            process,
            _dir: dir,
        })
    }

    /// The backend's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// CPU time the backend has used so far (all threads), nanoseconds.
    pub fn cpu_ns(&self) -> Option<u64> {
        crate::stats::process_cpu_ns(self.pid())
    }

    /// The backend's output so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Connects a frontend with one guest RAM region of `ram_bytes` at
    /// guest address 0 and the default display channel (the C backend
    /// needs one; gpuswap is given the same).
    pub fn connect(&self, ram_bytes: u64) -> Result<GpuFrontend, String> {
        let config = FrontendConfig {
            regions: vec![RegionSpec::new(0, ram_bytes)],
            timeout: Duration::from_secs(60),
            ..FrontendConfig::default()
        };
        GpuFrontend::connect(&self.socket, config).map_err(|e| {
            format!(
                "cannot connect to {}: {e}\nbackend log:\n{}",
                self.kind.label(),
                self.log()
            )
        })
    }
}
