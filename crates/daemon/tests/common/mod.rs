//! Shared helpers for the daemon's integration tests: spawning the real
//! `gpuswap-daemon` binary on temp sockets, a control-socket client, and
//! pixel pattern / hash helpers matching the daemon's `host_hash` and
//! `backing_hash` strings.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gpuswap_frontend::{DisplayEvent, DisplayHandle, FrontendConfig, GpuFrontend};
use gpuswap_protocol::wire::Rect;
use serde_json::{json, Value};

/// How long anything in these tests may take before it counts as hung.
pub const WAIT: Duration = Duration::from_secs(5);

/// The daemon binary Cargo built for these tests.
pub const DAEMON: &str = env!("CARGO_BIN_EXE_gpuswap-daemon");

/// A running `gpuswap-daemon` on temp sockets, killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub control: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Spawns the daemon with `--socket-path`, `--control-socket` and
    /// `extra` arguments, and waits until both sockets exist.
    pub fn spawn(name: &str, extra: &[&str]) -> Daemon {
        let mut d = Daemon::start(name, None, extra);
        d.wait_for_sockets(true);
        d
    }

    /// Spawns the daemon with `--fd N` for `fd` (inherited by the daemon
    /// alone), `--control-socket` and `extra`, and waits for the control
    /// socket. `socket` is unused then.
    pub fn spawn_on_fd(name: &str, fd: OwnedFd, extra: &[&str]) -> Daemon {
        let mut d = Daemon::start(name, Some(fd), extra);
        d.wait_for_sockets(false);
        d
    }

    /// Spawns the daemon on `fd` and returns at once, for daemons that are
    /// expected to refuse their start.
    pub fn spawn_on_fd_unchecked(name: &str, fd: OwnedFd) -> Daemon {
        Daemon::start(name, Some(fd), &[])
    }

    fn start(name: &str, fd: Option<OwnedFd>, extra: &[&str]) -> Daemon {
        static N: AtomicU32 = AtomicU32::new(0);
        // Unix socket paths are limited to 108 bytes: keep the name short.
        let short: String = name.chars().take(24).collect();
        let dir = std::env::temp_dir().join(format!(
            "gsd-{}-{}-{short}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("gpu.sock");
        let control = dir.join("control.sock");
        let log = dir.join("daemon.log");
        let out = File::create(&log).expect("log file");
        let mut cmd = match &fd {
            None => {
                let mut cmd = Command::new(DAEMON);
                cmd.arg("--socket-path").arg(&socket);
                cmd
            }
            Some(fd) => command_with_fd(Path::new(DAEMON), fd),
        };
        let child = cmd
            .arg("--control-socket")
            .arg(&control)
            .args(extra)
            .env("RUST_LOG", "info")
            // The relay's private socket goes in TMPDIR: tests look there.
            .env_remove("XDG_RUNTIME_DIR")
            .env("TMPDIR", &dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .expect("spawn gpuswap-daemon");
        // The daemon has its copy; ours must not keep a connection open.
        drop(fd);
        Daemon {
            child: Some(child),
            dir,
            socket,
            control,
            log,
        }
    }

    fn wait_for_sockets(&mut self, vhost_user: bool) {
        let deadline = Instant::now() + WAIT;
        while !((self.socket.exists() || !vhost_user) && self.control.exists()) {
            assert!(self.is_alive(), "daemon exited at start:\n{}", self.log());
            assert!(Instant::now() < deadline, "daemon sockets never appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Connects a frontend, panicking with the daemon log on failure.
    pub fn connect(&self, config: FrontendConfig) -> GpuFrontend {
        GpuFrontend::connect(&self.socket, config)
            .unwrap_or_else(|e| panic!("connect: {e}\ndaemon log:\n{}", self.log()))
    }

    /// A new control-socket connection.
    pub fn ctl(&self) -> Control {
        Control::connect(&self.control)
    }

    /// The daemon's stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Panics (with the log) unless the process is still running.
    pub fn assert_alive(&mut self) {
        assert!(self.is_alive(), "daemon died:\n{}", self.log());
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("kill");
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
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls the control socket until `pred(status)` holds.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut ctl = self.ctl();
        let deadline = Instant::now() + WAIT;
        loop {
            let st = ctl.status();
            if pred(&st) {
                return st;
            }
            assert!(Instant::now() < deadline, "{what}: last status {st}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("daemon log ({}):\n{}", self.log.display(), self.log());
        }
    }
}

/// A command for `binary` with `--fd=N`, N being `fd`, which the child
/// alone inherits.
pub fn command_with_fd(binary: &Path, fd: &OwnedFd) -> Command {
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new(binary);
    // SAFETY: the hook runs in the forked child before exec and only calls
    // fcntl, which is async-signal-safe. Clearing close-on-exec there, not
    // here, keeps the descriptor out of every other child the test process
    // starts meanwhile.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.arg(format!("--fd={raw}"));
    cmd
}

/// A control-socket client: one JSON request line, one response line.
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    pub fn connect(path: &Path) -> Control {
        let deadline = Instant::now() + WAIT;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("control socket {}: {e}", path.display()),
            }
        };
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let writer = stream.try_clone().expect("dup");
        Control {
            reader: BufReader::new(stream),
            writer,
        }
    }

    /// Sends one raw line and parses the response line.
    pub fn raw(&mut self, line: &str) -> Value {
        writeln!(self.writer, "{line}").expect("control write");
        self.read_line().expect("control response")
    }

    /// The next line from the daemon, parsed; None on EOF.
    pub fn read_line(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("control read");
        if n == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}")))
    }

    /// Changes the read timeout (for streams).
    pub fn set_read_timeout(&mut self, t: Duration) {
        self.reader
            .get_ref()
            .set_read_timeout(Some(t))
            .expect("timeout");
    }

    /// Sends a request and returns the response, whatever it says.
    pub fn request(&mut self, req: Value) -> Value {
        self.raw(&req.to_string())
    }

    /// Sends a request that must succeed.
    pub fn ok(&mut self, req: Value) -> Value {
        let resp = self.request(req.clone());
        assert_eq!(resp["ok"], true, "{req} -> {resp}");
        resp
    }

    pub fn status(&mut self) -> Value {
        self.ok(json!({"cmd": "status"}))
    }

    pub fn resources(&mut self) -> Vec<Value> {
        let r = self.ok(json!({"cmd": "resources"}));
        r["resources"].as_array().expect("resources array").clone()
    }

    pub fn resource(&mut self, id: u32) -> Option<Value> {
        let r = self.ok(json!({"cmd": "resources", "id": id}));
        r["resources"]
            .as_array()
            .expect("resources array")
            .first()
            .cloned()
    }

    /// The resource, which must be live.
    pub fn live(&mut self, id: u32) -> Value {
        self.resource(id)
            .unwrap_or_else(|| panic!("resource {id} is not live"))
    }

    /// The whole `counters` response (counters plus resources,
    /// host_memory_used and last_seq).
    pub fn counters(&mut self) -> Value {
        self.ok(json!({"cmd": "counters"}))
    }

    pub fn last_seq(&mut self) -> u64 {
        self.counters()["last_seq"].as_u64().expect("last_seq")
    }

    pub fn trace(&mut self, after: u64, resource: Option<u32>) -> Vec<Value> {
        let req = match resource {
            Some(id) => json!({"cmd": "trace", "after": after, "resource": id}),
            None => json!({"cmd": "trace", "after": after}),
        };
        self.ok(req)["events"].as_array().expect("events").clone()
    }

    pub fn fault(&mut self, req: Value) -> Value {
        let mut req = req;
        req["cmd"] = json!("fault");
        self.ok(req)
    }
}

/// Acked features from a status response.
pub fn acked_features(status: &Value) -> u64 {
    let s = status["acked_features"].as_str().expect("acked_features");
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex")
}

/// Deterministic, non-periodic bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// xxh3-64 as the daemon prints it (`host_hash`, `backing_hash`).
pub fn hash_hex(bytes: &[u8]) -> String {
    gpuswap_device::hex(xxhash_rust::xxh3::xxh3_64(bytes))
}

pub fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

/// The pixels of `r` inside an image `width` pixels wide with rows
/// `stride` bytes apart starting at `offset`, packed row after row.
pub fn sub_image(image: &[u8], stride: usize, offset: usize, r: Rect) -> Vec<u8> {
    let mut out = Vec::with_capacity((r.width * r.height * 4) as usize);
    for y in r.y..r.y + r.height {
        let start = offset + y as usize * stride + r.x as usize * 4;
        out.extend_from_slice(&image[start..start + r.width as usize * 4]);
    }
    out
}

/// Waits for a display event after index `mark` matching `pred`.
pub fn wait_display(
    display: &DisplayHandle,
    mark: usize,
    what: &str,
    pred: impl FnMut(&DisplayEvent) -> bool,
) -> DisplayEvent {
    display
        .wait_for(mark, WAIT, pred)
        .unwrap_or_else(|| panic!("no {what} on the display channel"))
}

/// Waits for the next UPDATE after event index `mark`: (rect, pixels).
pub fn next_update(display: &DisplayHandle, mark: usize) -> (Rect, Vec<u8>) {
    match wait_display(display, mark, "UPDATE", |e| {
        matches!(e, DisplayEvent::Update { .. })
    }) {
        DisplayEvent::Update {
            x,
            y,
            width,
            height,
            data,
            ..
        } => (rect(x, y, width, height), data),
        _ => unreachable!(),
    }
}

/// Events of one kind (`"event"` field) from a trace.
pub fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}
