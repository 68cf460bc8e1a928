//! A small synchronous QMP client over a Unix socket, for QEMU started with
//! `-chardev socket,id=qmp,path=...,server=on,wait=off
//! -mon chardev=qmp,mode=control`.
//!
//! Every command carries an `id`; replies with another id (late answers to
//! a command that timed out) are dropped. Asynchronous events that arrive
//! while waiting for a reply are kept, up to [`Qmp::MAX_EVENTS`] (oldest
//! dropped first), for the caller to [`Qmp::drain_events`]. Reads and
//! writes time out ([`Qmp::set_timeout`]), so a hung QEMU fails the call
//! instead of hanging the harness.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{poll_every, Result};

/// One asynchronous QMP event.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QmpEvent {
    /// The event name, e.g. `BALLOON_CHANGE`, `SHUTDOWN`.
    pub event: String,
    /// The event's `data` (`Value::Null` when it has none).
    pub data: Value,
    /// QEMU's timestamp in seconds since the epoch, when present.
    pub timestamp_s: Option<f64>,
}

impl QmpEvent {
    fn from_value(v: &Value) -> Option<QmpEvent> {
        let event = v.get("event")?.as_str()?.to_string();
        let ts = &v["timestamp"];
        let timestamp_s = match (ts["seconds"].as_f64(), ts["microseconds"].as_f64()) {
            (Some(s), Some(us)) => Some(s + us / 1e6),
            (Some(s), None) => Some(s),
            _ => None,
        };
        Some(QmpEvent {
            event,
            data: v.get("data").cloned().unwrap_or(Value::Null),
            timestamp_s,
        })
    }

    /// The guest memory size in bytes a `BALLOON_CHANGE` event reports.
    pub fn balloon_actual(&self) -> Option<u64> {
        if self.event == "BALLOON_CHANGE" {
            self.data["actual"].as_u64()
        } else {
            None
        }
    }
}

/// A QMP connection in command mode.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Bytes of a line not yet complete when a read timed out.
    partial: Vec<u8>,
    events: VecDeque<QmpEvent>,
    timeout: Duration,
    next_id: u64,
    /// QEMU's version from the greeting, e.g. "10.0.2".
    version: String,
}

impl Qmp {
    /// How many unclaimed events are kept.
    pub const MAX_EVENTS: usize = 1024;
    /// The default per-command timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Connects to the QMP socket at `path`, retrying until it exists and
    /// accepts (QEMU creates it during start-up) for up to `timeout`, reads
    /// the greeting and leaves capabilities negotiation.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let mut last = None;
        let stream = poll_every(Duration::from_millis(20), timeout, || {
            UnixStream::connect(path).map_err(|e| last = Some(e)).ok()
        })
        .ok_or_else(|| {
            format!(
                "QMP socket {} not connectable within {timeout:?}: {}",
                path.display(),
                last.map_or_else(String::new, |e| e.to_string())
            )
        })?;
        let writer = stream
            .try_clone()
            .map_err(|e| format!("QMP {}: {e}", path.display()))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            partial: Vec::new(),
            events: VecDeque::new(),
            timeout: Self::DEFAULT_TIMEOUT,
            next_id: 1,
            version: String::new(),
        };
        qmp.apply_timeout(Self::DEFAULT_TIMEOUT)?;
        let greeting_deadline = Instant::now() + Self::DEFAULT_TIMEOUT.max(timeout);
        let greeting = loop {
            let v = qmp
                .read_message(greeting_deadline)
                .map_err(|e| format!("QMP greeting from {}: {e}", path.display()))?;
            if v.get("QMP").is_some() {
                break v;
            }
            if let Some(ev) = QmpEvent::from_value(&v) {
                qmp.keep_event(ev);
                continue;
            }
            return Err(format!(
                "QMP {}: expected a greeting, got {v}",
                path.display()
            ));
        };
        let ver = &greeting["QMP"]["version"]["qemu"];
        qmp.version = format!(
            "{}.{}.{}",
            ver["major"].as_u64().unwrap_or(0),
            ver["minor"].as_u64().unwrap_or(0),
            ver["micro"].as_u64().unwrap_or(0)
        );
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// QEMU's version as the greeting reported it ("major.minor.micro").
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Sets how long one command (its write and its reply) may take.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `cmd` with `args` (an object, or `None`) and returns its
    /// `return` value; a QMP error is returned as `Err` carrying QEMU's
    /// `error.desc` (and class). Events read meanwhile are kept.
    pub fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": cmd, "id": id });
        if let Some(args) = args {
            msg["arguments"] = args;
        }
        let deadline = Instant::now() + self.timeout;
        self.apply_timeout(self.timeout)?;
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(|e| format!("QMP {cmd}: write: {e}"))?;
        loop {
            let v = self
                .read_message(deadline)
                .map_err(|e| format!("QMP {cmd}: {e}"))?;
            if let Some(ev) = QmpEvent::from_value(&v) {
                self.keep_event(ev);
                continue;
            }
            if v.get("id") != Some(&json!(id)) {
                // A late reply to an earlier command that timed out.
                continue;
            }
            if let Some(ret) = v.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = v.get("error") {
                let desc = err["desc"].as_str().unwrap_or("(no description)");
                let class = err["class"].as_str().unwrap_or("?");
                return Err(format!("QMP {cmd} failed: {desc} ({class})"));
            }
            return Err(format!("QMP {cmd}: unexpected reply {v}"));
        }
    }

    /// Sets the balloon target: the guest memory size QEMU asks the guest
    /// to shrink (or grow back) to, in bytes.
    pub fn balloon(&mut self, target_bytes: u64) -> Result<()> {
        self.execute("balloon", Some(json!({ "value": target_bytes })))
            .map(|_| ())
    }

    /// The guest memory size in bytes the balloon driver last reported
    /// (`query-balloon`'s `actual`).
    pub fn query_balloon(&mut self) -> Result<u64> {
        let v = self.execute("query-balloon", None)?;
        v["actual"]
            .as_u64()
            .ok_or_else(|| format!("QMP query-balloon: no `actual` in {v}"))
    }

    /// Asks QEMU to exit. QEMU may close the socket before it answers;
    /// that counts as success. The connection is unusable afterwards.
    pub fn quit(&mut self) -> Result<()> {
        match self.execute("quit", None) {
            Ok(_) => Ok(()),
            Err(e) if e.contains(CLOSED) || e.contains("Connection reset") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes every event kept so far, oldest first.
    pub fn drain_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    /// Waits up to `timeout` for an event named `name` (one already kept
    /// counts), removing and returning it; other events stay kept.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<QmpEvent> {
        if let Some(i) = self.events.iter().position(|e| e.event == name) {
            return Ok(self.events.remove(i).expect("index in range"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let v = self
                .read_message(deadline)
                .map_err(|e| format!("QMP waiting for {name}: {e}"))?;
            if let Some(ev) = QmpEvent::from_value(&v) {
                if ev.event == name {
                    return Ok(ev);
                }
                self.keep_event(ev);
            }
        }
    }

    fn keep_event(&mut self, ev: QmpEvent) {
        if self.events.len() >= Self::MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    fn apply_timeout(&self, timeout: Duration) -> Result<()> {
        // A zero timeout means "block forever" to the socket API.
        let t = Some(timeout.max(Duration::from_millis(1)));
        self.writer
            .set_write_timeout(t)
            .and_then(|()| self.reader.get_ref().set_read_timeout(t))
            .map_err(|e| format!("QMP: setting socket timeouts: {e}"))
    }

    /// Reads one JSON message, by `deadline`. A line cut short by a
    /// timeout is kept and completed by the next read.
    fn read_message(&mut self, deadline: Instant) -> Result<Value> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out waiting for QEMU".into());
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| format!("setting the read timeout: {e}"))?;
            match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(0) => return Err(CLOSED.into()),
                Ok(_) if self.partial.ends_with(b"\n") => {
                    let line = std::mem::take(&mut self.partial);
                    let text = String::from_utf8_lossy(&line);
                    if text.trim().is_empty() {
                        continue;
                    }
                    return serde_json::from_str(text.trim())
                        .map_err(|e| format!("bad QMP message {text:?}: {e}"));
                }
                // EOF in the middle of a line.
                Ok(_) => return Err(CLOSED.into()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

const CLOSED: &str = "QEMU closed the QMP connection";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Process, ScratchDir};
    use std::path::PathBuf;
    use std::process::Command;

    const MIB: u64 = 1024 * 1024;

    /// `GPUSWAP_QEMU` if it names an existing file, else
    /// `qemu-system-x86_64` from `PATH`.
    fn find_qemu() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("GPUSWAP_QEMU").map(PathBuf::from) {
            if p.is_file() {
                return Some(p);
            }
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("qemu-system-x86_64"))
                .find(|p| p.is_file())
        })
    }

    #[test]
    fn qmp_against_real_qemu() {
        let qemu_bin = find_qemu()
            .expect("no GPUSWAP_QEMU and no qemu-system-x86_64 in PATH: run `cargo xtask setup`");
        let started = Instant::now();
        let dir = ScratchDir::new("gpuswap-qmp", "test").expect("temp dir");
        let sock = dir.join("qmp.sock");
        let mut command = Command::new(&qemu_bin);
        command
            // Firmware paths for a QEMU built from source (harmless for
            // Debian's, which has them built in).
            .args(["-L", "/usr/share/seabios", "-L", "/usr/share/qemu"])
            .args([
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-nodefaults",
                "-display",
                "none",
                "-S",
                "-m",
                "256",
                "-device",
                "virtio-balloon-pci,id=balloon0",
                "-chardev",
            ])
            .arg(format!(
                "socket,id=qmp,path={},server=on,wait=off",
                sock.display()
            ))
            .args(["-mon", "chardev=qmp,mode=control"]);
        let mut qemu = Process::spawn(&mut command, &dir.join("qemu.log"))
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", qemu_bin.display()));

        let mut qmp = Qmp::connect(&sock, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\nQEMU log:\n{}", qemu.log()));
        assert!(!qmp.version().is_empty());

        assert_eq!(qmp.query_balloon().expect("query-balloon"), 256 * MIB);

        // Accepted; the vCPUs are stopped (-S), so no guest driver acts on
        // it and `actual` need not move.
        qmp.balloon(128 * MIB).expect("balloon 128 MiB");
        let actual = qmp.query_balloon().expect("query-balloon");
        assert!(actual <= 256 * MIB, "actual {actual}");

        // QEMU's own words come back in the error.
        let err = qmp
            .execute("gpuswap-no-such-command", None)
            .expect_err("unknown command must fail");
        assert!(
            err.contains("The command gpuswap-no-such-command has not been found"),
            "{err}"
        );
        // A bad argument is an error too, and the connection stays usable.
        let err = qmp
            .execute("balloon", Some(json!({ "value": "lots" })))
            .expect_err("bad argument must fail");
        assert!(err.contains("value"), "{err}");
        assert_eq!(qmp.query_balloon().expect("query-balloon"), actual);

        qmp.quit().expect("quit");
        let status = qemu
            .wait_exit(Duration::from_secs(3))
            .unwrap_or_else(|| panic!("QEMU did not exit after quit\n{}", qemu.log()));
        assert!(status.success(), "QEMU exit {status}\n{}", qemu.log());
        // quit emits SHUTDOWN; it was kept (or is still on the socket).
        let mut events = qmp.drain_events();
        if !events.iter().any(|e| e.event == "SHUTDOWN") {
            if let Ok(ev) = qmp.wait_event("SHUTDOWN", Duration::from_millis(500)) {
                events.push(ev);
            }
        }
        assert!(
            events.iter().any(|e| e.event == "SHUTDOWN"),
            "events: {events:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn connect_times_out_without_a_socket() {
        let path =
            std::env::temp_dir().join(format!("gpuswap-qmp-none-{}.sock", std::process::id()));
        let t = Instant::now();
        let err = match Qmp::connect(&path, Duration::from_millis(100)) {
            Ok(_) => panic!("connected to nothing"),
            Err(e) => e,
        };
        assert!(err.contains("not connectable"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn hung_peer_times_out_and_events_are_bounded() {
        use std::os::unix::net::UnixListener;
        let dir = ScratchDir::new("gpuswap-qmp", "fake").expect("temp dir");
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        // A fake QEMU: greets, answers qmp_capabilities after a flood of
        // events, then never answers again.
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            writeln!(s, r#"{{"QMP": {{"version": {{"qemu": {{"major": 9, "minor": 1, "micro": 0}}}}, "capabilities": []}}}}"#).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let cmd: Value = serde_json::from_str(&line).unwrap();
            for i in 0..(Qmp::MAX_EVENTS + 10) {
                writeln!(s, r#"{{"timestamp": {{"seconds": 1, "microseconds": 500000}}, "event": "BALLOON_CHANGE", "data": {{"actual": {i}}}}}"#).unwrap();
            }
            writeln!(s, "{}", json!({"return": {}, "id": cmd["id"]})).unwrap();
            line.clear();
            let _ = r.read_line(&mut line);
            std::thread::sleep(Duration::from_millis(500));
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(2)).expect("connect");
        assert_eq!(qmp.version(), "9.1.0");
        let events = qmp.drain_events();
        assert_eq!(events.len(), Qmp::MAX_EVENTS);
        // The oldest were dropped.
        assert_eq!(events[0].balloon_actual(), Some(10));
        assert_eq!(events[0].timestamp_s, Some(1.5));
        assert!(qmp.drain_events().is_empty());

        qmp.set_timeout(Duration::from_millis(200));
        let t = Instant::now();
        let err = qmp.query_balloon().expect_err("no answer");
        assert!(err.contains("timed out"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
        server.join().unwrap();
    }
}
