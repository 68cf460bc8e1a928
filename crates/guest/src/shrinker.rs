//! The patched virtio-gpu driver's shrinker files in debugfs
//! (guest-kernel-patches): `virtio-gpu-shrinker` (counters) and
//! `virtio-gpu-shrink` (write `"<mode> <pages>"` to force a scan; read the
//! result of the last one), plus a background thread that keeps forcing
//! scans so that evictions race whatever the agent does meanwhile.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use gpuswap_api::agent::ScanMode;
use gpuswap_api::agent::{RunOutput, ScanLoopTotals};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::sysinfo::parse_counters;

/// Where DRM puts per-minor debugfs directories.
const DRI_DEBUGFS: &str = "/sys/kernel/debug/dri";
const STATS_FILE: &str = "virtio-gpu-shrinker";
const SCAN_FILE: &str = "virtio-gpu-shrink";

/// The word the `virtio-gpu-shrink` file expects for `mode`.
pub fn mode_word(mode: ScanMode) -> &'static str {
    match mode {
        ScanMode::Purge => "purge",
        ScanMode::Evict => "evict",
        ScanMode::PurgeWait => "purge-wait",
        ScanMode::EvictWait => "evict-wait",
        ScanMode::All => "all",
    }
}

/// The debugfs directory of the virtio-gpu device with the shrinker files.
pub fn dir() -> Result<PathBuf> {
    let root = Path::new(DRI_DEBUGFS);
    let entries = fs::read_dir(root).map_err(|e| Error::io(root.display(), &e))?;
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(STATS_FILE).exists())
        .collect();
    dirs.sort();
    dirs.into_iter().next().ok_or_else(|| {
        Error::with_errno(
            format!("no {DRI_DEBUGFS}/*/{STATS_FILE}: kernel without the gpuswap patches?"),
            nix::errno::Errno::ENOENT,
        )
    })
}

/// The counters: `evictable_pages`, `evicted_pages`, `purgeable_pages`,
/// `pinned_pages`, `evictions`, `restores`, `purges`.
pub fn stats() -> Result<Map<String, Value>> {
    let path = dir()?.join(STATS_FILE);
    let text = fs::read_to_string(&path).map_err(|e| Error::io(path.display(), &e))?;
    Ok(parse_counters(&text))
}

/// Forces a scan of `pages` pages; returns the kernel's `freed` and
/// `remaining` for it.
pub fn scan(mode: ScanMode, pages: u64) -> Result<Map<String, Value>> {
    scan_in(&dir()?, mode, pages)
}

fn scan_in(dir: &Path, mode: ScanMode, pages: u64) -> Result<Map<String, Value>> {
    let path = dir.join(SCAN_FILE);
    fs::write(&path, format!("{} {pages}", mode_word(mode)))
        .map_err(|e| Error::io(path.display(), &e))?;
    let text = fs::read_to_string(&path).map_err(|e| Error::io(path.display(), &e))?;
    Ok(parse_counters(&text))
}

/// Totals of a background scan loop.
#[derive(Debug, Default)]
struct LoopTotals {
    scans: u64,
    freed: u64,
    errors: u64,
    first_error: Option<String>,
}

/// A thread forcing a scan every `interval` until stopped.
#[derive(Debug)]
pub struct ScanLoop {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<LoopTotals>,
    started: Instant,
}

impl ScanLoop {
    pub fn start(mode: ScanMode, pages: u64, interval: Duration) -> Result<ScanLoop> {
        let dir = dir()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("scan-loop".into())
            .spawn(move || {
                let mut totals = LoopTotals::default();
                while !flag.load(Ordering::Relaxed) {
                    match scan_in(&dir, mode, pages) {
                        Ok(r) => {
                            totals.scans += 1;
                            totals.freed += r.get("freed").and_then(Value::as_u64).unwrap_or(0);
                        }
                        Err(e) => {
                            totals.errors += 1;
                            totals.first_error.get_or_insert(e.message);
                        }
                    }
                    std::thread::sleep(interval);
                }
                totals
            })
            .map_err(|e| Error::io("spawn scan loop", &e))?;
        Ok(ScanLoop {
            stop,
            thread,
            started: Instant::now(),
        })
    }

    /// Stops the loop; returns what it did.
    pub fn stop(self) -> Result<ScanLoopTotals> {
        self.stop.store(true, Ordering::Relaxed);
        let totals = self
            .thread
            .join()
            .map_err(|_| Error::msg("scan loop thread panicked"))?;
        Ok(ScanLoopTotals {
            scans: totals.scans,
            freed: totals.freed,
            errors: totals.errors,
            first_error: totals.first_error,
            ms: self.started.elapsed().as_millis() as u64,
        })
    }
}

/// Runs a program (busybox applets: insmod, rmmod, dmesg, ...) and returns
/// how it ended and its output (cut to 16 KiB each).
///
/// The program starts with OOM score adjustment 0 rather than the agent's
/// (see [`crate::hog::protect_agent_from_oom`]), so it stays killable.
pub fn run(argv: &[String]) -> Result<RunOutput> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| Error::msg("run: empty argv"))?;
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args).stdin(std::process::Stdio::null());
    // SAFETY: the hook runs between fork and exec and only makes raw
    // syscalls (open, write, close) on a static path and buffer.
    unsafe { cmd.pre_exec(reset_oom_score_adj) };
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("run {prog}"), &e))?;
    let cut = |b: &[u8]| {
        let b = &b[b.len().saturating_sub(16 * 1024)..];
        String::from_utf8_lossy(b).into_owned()
    };
    Ok(RunOutput {
        status: out.status.code(),
        signal: out.status.signal(),
        stdout: cut(&out.stdout),
        stderr: cut(&out.stderr),
    })
}

/// `pre_exec` hook: set /proc/self/oom_score_adj to 0, ignoring failure
/// (raising the score is always allowed; lowering it needs CAP_SYS_RESOURCE).
/// Async-signal-safe: raw syscalls only.
fn reset_oom_score_adj() -> std::io::Result<()> {
    use nix::libc;
    const PATH: &std::ffi::CStr = c"/proc/self/oom_score_adj";
    // SAFETY: `PATH` is a static NUL-terminated string and the buffer a
    // static one-byte slice; the descriptor is closed before returning.
    unsafe {
        let fd = libc::open(PATH.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_and_modes() {
        let m = parse_counters("evictable_pages 12\nevictions 3\nbogus\nfreed x\n");
        assert_eq!(m["evictable_pages"], 12);
        assert_eq!(m["evictions"], 3);
        assert_eq!(m.len(), 2);
        assert_eq!(mode_word(ScanMode::EvictWait), "evict-wait");
        assert_eq!(ScanMode::default(), ScanMode::All);
        let mode: ScanMode = serde_json::from_value(serde_json::json!("purge_wait")).unwrap();
        assert_eq!(mode, ScanMode::PurgeWait);
    }

    #[test]
    fn run_reports_status_and_output() {
        let r = run(&[
            "sh".into(),
            "-c".into(),
            "echo hi; echo err >&2; exit 3".into(),
        ])
        .unwrap();
        assert_eq!(r.status, Some(3));
        assert_eq!(r.stdout, "hi\n");
        assert_eq!(r.stderr, "err\n");
        assert!(run(&[]).is_err());
        let r = run(&["cat".into(), "/proc/self/oom_score_adj".into()]).unwrap();
        let own: i32 = fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let child: i32 = r.stdout.trim().parse().unwrap();
        // Raised to 0 always; lowered to 0 only with CAP_SYS_RESOURCE.
        assert!(child == 0 || (own > 0 && child == own), "{own} -> {child}");
    }
}
