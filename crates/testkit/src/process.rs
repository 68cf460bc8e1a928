//! Child processes with their logs, scratch directories, and waits with
//! deadlines.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(5);

/// Calls `probe` every few milliseconds until it returns `Some`, for at
/// most `timeout` (at least once): its value, or `None` at the deadline.
pub fn poll_until<T>(timeout: Duration, probe: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(POLL, timeout, probe)
}

/// [`poll_until`] with `period` between two calls, for probes that cost
/// more than a look (a connection attempt, reading a log).
pub fn poll_every<T>(
    period: Duration,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(period);
    }
}

/// Waits until `path` exists, for at most `timeout`, giving up early with
/// `gone`'s reason if it says the process that should create it is gone.
pub fn wait_for_path(
    path: &Path,
    timeout: Duration,
    mut gone: impl FnMut() -> Option<String>,
) -> Result<(), String> {
    let outcome = poll_until(timeout, || {
        if path.exists() {
            Some(Ok(()))
        } else {
            gone().map(Err)
        }
    });
    match outcome {
        Some(Ok(())) => Ok(()),
        Some(Err(why)) => Err(format!("{} will not appear: {why}", path.display())),
        None => Err(format!(
            "{} did not appear within {timeout:?}",
            path.display()
        )),
    }
}

/// A running child process, its output in a log file; killed on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Set once it has been reaped: the pid is no longer its own.
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with stdin closed and stdout and stderr going to
    /// the new file `log`.
    pub fn spawn(command: &mut Command, log: &Path) -> io::Result<Process> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        Ok(Process {
            child,
            status: None,
            log: log.to_path_buf(),
        })
    }

    /// The process id (also after it has been reaped).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_reap().is_none()
    }

    /// Its exit status, once it has exited (reaping it).
    pub fn try_reap(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for it to exit on its own: `None` if it is
    /// still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.try_reap())
    }

    /// Sends `signal`; fails (ESRCH) once the process has been reaped,
    /// since its pid may belong to another process by then.
    pub fn signal(&mut self, signal: Signal) -> nix::Result<()> {
        if self.try_reap().is_some() {
            return Err(nix::errno::Errno::ESRCH);
        }
        let pid = i32::try_from(self.pid()).map_err(|_| nix::errno::Errno::ESRCH)?;
        signal::kill(Pid::from_raw(pid), signal)
    }

    /// SIGKILL, as the OOM killer or a crash would, and reaps it; the exit
    /// status it had if it had exited already.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_reap() {
            return Ok(status);
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A fresh, empty directory under the system's temp dir, for a child's
/// sockets and log; removed with its contents on drop unless
/// [`keep`](ScratchDir::keep) was called.
///
/// Its name is `{prefix}-{pid}-{n}-{name}`, `name` cut to 24 characters:
/// unix socket paths inside it must stay under 108 bytes.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    /// Creates the directory (removing a stale one of the same name).
    pub fn new(prefix: &str, name: &str) -> io::Result<ScratchDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let short: String = name.chars().take(24).collect();
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{short}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        ScratchDir::at(path)
    }

    /// Creates the directory `path` (removing a stale one), for callers
    /// whose directory name is fixed (the harness's run directories).
    pub fn at(path: impl Into<PathBuf>) -> io::Result<ScratchDir> {
        let path = path.into();
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir { path, keep: false })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Leaves the directory in place when dropped (for a failed test's
    /// logs).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_goes_to_the_log_and_the_exit_status_is_kept() {
        let dir = ScratchDir::new("gpuswap-testkit", "exit").unwrap();
        let mut p = Process::spawn(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            &dir.join("log"),
        )
        .unwrap();
        let status = p.wait_exit(Duration::from_secs(10)).expect("exited");
        assert_eq!(status.code(), Some(3));
        assert!(!p.is_running());
        assert_eq!(p.log(), "out\nerr\n");
        assert_eq!(p.log_path(), dir.join("log"));
    }

    #[test]
    fn a_running_process_is_not_waited_past_the_deadline_and_dies_with_its_handle() {
        let dir = ScratchDir::new("gpuswap-testkit", "drop").unwrap();
        let mut p = Process::spawn(Command::new("sleep").arg("60"), &dir.join("log")).unwrap();
        let pid = Pid::from_raw(p.pid() as i32);
        assert!(p.wait_exit(Duration::from_millis(50)).is_none());
        assert!(p.is_running());
        drop(p);
        // Reaped: the pid names no process (or, at worst, a new one).
        assert!(signal::kill(pid, None).is_err());
    }

    #[test]
    fn kill_and_signal_report_how_it_ended() {
        use std::os::unix::process::ExitStatusExt;
        let dir = ScratchDir::new("gpuswap-testkit", "kill").unwrap();
        let log = dir.join("log");
        let mut p = Process::spawn(Command::new("sleep").arg("60"), &log).unwrap();
        p.signal(Signal::SIGTERM).unwrap();
        let status = p.wait_exit(Duration::from_secs(10)).expect("exited");
        assert_eq!(status.signal(), Some(15));
        assert!(p.signal(Signal::SIGTERM).is_err(), "reaped: no signal");
        assert_eq!(p.kill().unwrap(), status, "reaped: its exit status");
        let mut q = Process::spawn(Command::new("sleep").arg("60"), &log).unwrap();
        let status = q.kill().unwrap();
        assert_eq!(status.signal(), Some(9));
        assert!(!q.is_running());
    }

    #[test]
    fn waiting_for_a_path_stops_when_its_creator_is_gone() {
        let dir = ScratchDir::new("gpuswap-testkit", "path").unwrap();
        let missing = dir.join("never-there");
        let err = wait_for_path(&missing, Duration::from_secs(10), || {
            Some("it exited".into())
        })
        .unwrap_err();
        assert!(err.contains("it exited"), "{err}");
        let err = wait_for_path(&missing, Duration::from_millis(20), || None).unwrap_err();
        assert!(err.contains("did not appear"), "{err}");
        wait_for_path(dir.path(), Duration::ZERO, || None).unwrap();
    }

    #[test]
    fn poll_until_tries_at_least_once_and_stops_at_the_deadline() {
        assert_eq!(poll_until(Duration::ZERO, || Some(7)), Some(7));
        let mut tries = 0;
        let started = Instant::now();
        assert_eq!(
            poll_until(Duration::from_millis(30), || {
                tries += 1;
                None::<()>
            }),
            None
        );
        assert!(tries > 1 && started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn scratch_dirs_are_fresh_distinct_and_removed_unless_kept() {
        let a = ScratchDir::new(
            "gpuswap-testkit",
            "a-name-longer-than-twenty-four-characters",
        )
        .unwrap();
        let mut b = ScratchDir::new("gpuswap-testkit", "b").unwrap();
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir() && b.path().is_dir());
        let name = a.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.ends_with("-a-name-longer-than-twent"), "{name}");
        std::fs::write(a.join("log"), "x").unwrap();
        let (pa, pb) = (a.path().to_path_buf(), b.path().to_path_buf());
        drop(a);
        assert!(!pa.exists());
        b.keep();
        drop(b);
        assert!(pb.exists());
        std::fs::remove_dir_all(pb).unwrap();
    }

    #[test]
    fn a_scratch_dir_at_a_fixed_path_starts_empty() {
        let outer = ScratchDir::new("gpuswap-testkit", "at").unwrap();
        let path = outer.join("fixed");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("stale"), "x").unwrap();
        let dir = ScratchDir::at(&path).unwrap();
        assert_eq!(dir.path(), path);
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn poll_every_waits_its_period_between_tries() {
        let mut tries = 0;
        let started = Instant::now();
        let got = poll_every(Duration::from_millis(20), Duration::from_secs(10), || {
            tries += 1;
            (tries == 3).then_some(tries)
        });
        assert_eq!(got, Some(3));
        assert!(started.elapsed() >= Duration::from_millis(40));
    }
}
