//! Spawning QEMU's reference C backend for the integration tests.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's qemu-system-gui installs the backend.
pub const C_BACKEND: &str = "/usr/lib/qemu/vhost-user-gpu";

/// A running `vhost-user-gpu --socket-path=...`, killed on drop.
pub struct CBackend {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    dir: PathBuf,
}

/// Spawns the C backend, or None (with a loud message) if it is not
/// installed.
pub fn spawn_c_backend(test: &str) -> Option<CBackend> {
    spawn_c_backend_with(test, &[])
}

pub fn spawn_c_backend_with(test: &str, extra_args: &[&str]) -> Option<CBackend> {
    if !Path::new(C_BACKEND).exists() {
        eprintln!(
            "\n\n!!!!!!!! SKIPPING {test}: {C_BACKEND} is not installed \
             (apt-get install -t bookworm-backports qemu-system-gui) !!!!!!!!\n"
        );
        return None;
    }
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gpuswap-frontend-{}-{}-{test}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("gpu.sock");
    let log = dir.join("backend.log");
    let err = File::create(&log).expect("log file");
    let child = Command::new(C_BACKEND)
        .arg(format!("--socket-path={}", socket.display()))
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(err.try_clone().expect("dup log"))
        .stderr(err)
        .env("G_MESSAGES_DEBUG", "")
        .spawn()
        .expect("spawn vhost-user-gpu");
    Some(CBackend {
        child: Some(child),
        socket,
        log,
        dir,
    })
}

impl CBackend {
    /// The backend's stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for CBackend {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
