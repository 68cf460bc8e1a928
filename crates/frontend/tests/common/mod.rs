//! Spawning QEMU's reference C backend for the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use gpuswap_testkit::{Process, ScratchDir};

/// Where Debian's qemu-system-gui installs the backend.
pub const C_BACKEND: &str = "/usr/lib/qemu/vhost-user-gpu";

/// A running `vhost-user-gpu --socket-path=...` in its own directory;
/// killed (and the directory removed) on drop.
pub struct CBackend {
    // Dropped in this order: the process is gone before its directory.
    process: Process,
    _dir: ScratchDir,
    pub socket: PathBuf,
}

/// Spawns the C backend, or None (with a loud message) if it is not
/// installed.
pub fn spawn_c_backend(test: &str) -> Option<CBackend> {
    if !Path::new(C_BACKEND).exists() {
        eprintln!(
            "\n\n!!!!!!!! SKIPPING {test}: {C_BACKEND} is not installed \
             (apt-get install -t bookworm-backports qemu-system-gui) !!!!!!!!\n"
        );
        return None;
    }
    let dir = ScratchDir::new("gpuswap-frontend", test).expect("temp dir");
    let socket = dir.join("gpu.sock");
    let mut cmd = Command::new(C_BACKEND);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .env("G_MESSAGES_DEBUG", "");
    let process = Process::spawn(&mut cmd, &dir.join("backend.log")).expect("spawn vhost-user-gpu");
    Some(CBackend {
        process,
        _dir: dir,
        socket,
    })
}

impl CBackend {
    /// The backend's stdout and stderr so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }
}
