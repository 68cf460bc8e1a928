//! The control socket: line-delimited JSON requests and responses for the
//! harness, tests and people debugging races. See the README for the
//! protocol.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use gpuswap_device::ResourceInfo;
use gpuswap_protocol::ctrl_type;
use log::{info, warn};
use nix::sys::stat::{umask, Mode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::backend::ControlHandle;

/// One request line.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Daemon identity and what the frontend negotiated.
    Status,
    /// Live resources, with hashes unless `hashes` is false; `id` narrows
    /// to one.
    Resources {
        id: Option<u32>,
        #[serde(default = "yes")]
        hashes: bool,
    },
    /// Running totals.
    Counters,
    /// Retained events after sequence number `after`, optionally for one
    /// resource.
    Trace {
        #[serde(default)]
        after: u64,
        resource: Option<u32>,
    },
    /// Every event from now on, one per line, until the client hangs up.
    Subscribe,
    /// Set fault injection knobs; omitted ones are unchanged.
    Fault {
        fail_attaches: Option<u32>,
        /// Corrupt the host copy after this many successful transfers.
        corrupt_transfers: Option<u32>,
        /// Request type name (e.g. "resource_detach_backing") to delay.
        delay_command: Option<String>,
        /// Delay in ms for `delay_command`; 0 removes the delay.
        delay_ms: Option<u64>,
        /// Clear every fault first.
        #[serde(default)]
        clear: bool,
    },
}

fn yes() -> bool {
    true
}

/// The longest request line; a longer one ends the connection (requests
/// are a few dozen bytes).
pub const MAX_LINE: usize = 64 << 10;
/// Clients served at once, one thread each; more are turned away.
pub const MAX_CLIENTS: usize = 32;
/// The longest completion delay a `fault` request may set (one minute:
/// enough to widen any race window, short of wedging the guest for good).
pub const MAX_DELAY_MS: u64 = 60_000;

/// Logs the first refusal of a kind and then every 100th, so that a client
/// hammering the socket cannot flood the log.
fn refused(count: &AtomicU64, what: std::fmt::Arguments<'_>) {
    let n = count.fetch_add(1, Ordering::Relaxed);
    if n.is_multiple_of(100) {
        warn!("control socket: {what} ({} so far)", n + 1);
    }
}

/// Serves the control socket at `path` in a background thread.
pub fn serve(path: &Path, backend: ControlHandle) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    // Owner-only from the moment it exists: bind creates the file with
    // the umask's permissions, and a chmod after it would leave a window.
    // The umask is per process, but no other thread creates files.
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(previous);
    let listener = bound?;
    info!("control socket at {}", path.display());
    let clients = Arc::new(AtomicUsize::new(0));
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let turned_away = AtomicU64::new(0);
            for stream in listener.incoming() {
                let mut stream = match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        warn!("control socket: accept failed: {e}");
                        continue;
                    }
                };
                if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::AcqRel);
                    refused(
                        &turned_away,
                        format_args!("turned a client away, {MAX_CLIENTS} are connected"),
                    );
                    let error = format!("too many control clients (at most {MAX_CLIENTS})");
                    let _ = writeln!(stream, "{}", json!({"ok": false, "error": error}));
                    continue;
                }
                let (backend, clients) = (backend.clone(), clients.clone());
                let spawned =
                    thread::Builder::new()
                        .name("control-client".into())
                        .spawn(move || {
                            client(stream, backend);
                            clients.fetch_sub(1, Ordering::AcqRel);
                        });
                if let Err(e) = spawned {
                    warn!("control socket: cannot start a client thread: {e}");
                }
            }
        })?;
    Ok(())
}

/// The next request line from `reader`, at most [`MAX_LINE`] bytes; `None`
/// at the end of the stream, `Err(())` for a line too long.
fn read_line(reader: &mut impl BufRead) -> Option<Result<String, ()>> {
    let mut buf = Vec::new();
    match reader
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
    {
        Ok(0) | Err(_) => None,
        Ok(_) if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE => Some(Err(())),
        Ok(_) => Some(Ok(String::from_utf8_lossy(&buf).into_owned())),
    }
}

fn client(stream: UnixStream, backend: ControlHandle) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut out = stream;
    let mut reader = BufReader::new(read_half);
    while let Some(line) = read_line(&mut reader) {
        let Ok(line) = line else {
            static TOO_LONG: AtomicU64 = AtomicU64::new(0);
            refused(
                &TOO_LONG,
                format_args!("request line over {MAX_LINE} bytes"),
            );
            let error = format!("request line longer than {MAX_LINE} bytes");
            let _ = writeln!(out, "{}", json!({"ok": false, "error": error}));
            return;
        };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match parse(&line) {
            Ok(ControlRequest::Subscribe) => {
                subscribe(out, &backend);
                return;
            }
            Ok(ControlRequest::Resources { id, hashes }) => {
                if write_resources(&mut out, &backend, id, hashes).is_err() {
                    return;
                }
                continue;
            }
            Ok(request) => handle(request, &backend),
            Err(reply) => reply,
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}

/// One request line parsed, or the error reply to send for it.
pub fn parse(line: &str) -> Result<ControlRequest, Value> {
    serde_json::from_str(line)
        .map_err(|e| json!({"ok": false, "error": format!("bad request: {e}")}))
}

/// The reply to one request ([`ControlRequest::Subscribe`] excepted: it
/// takes over the connection).
pub fn handle(request: ControlRequest, backend: &ControlHandle) -> Value {
    let acked = backend.acked_features();
    let mut device = backend.device();
    match request {
        ControlRequest::Status => json!({
            "ok": true,
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "acked_features": format!("{acked:#x}"),
            "resources": device.resource_count(),
            "host_memory_used": device.host_memory_used(),
            "max_host_memory": device.config().max_host_memory,
            "max_entries": device.config().max_entries,
        }),
        ControlRequest::Resources { id, hashes } => {
            drop(device);
            let mut infos = Vec::new();
            resources(backend, id, hashes, |info| {
                infos.push(info);
                Ok(())
            })
            .map_or_else(
                |e| json!({"ok": false, "error": e.to_string()}),
                |()| json!({"ok": true, "resources": infos}),
            )
        }
        ControlRequest::Counters => json!({
            "ok": true,
            "counters": device.counters(),
            "ring_errors": backend.ring_errors(),
            "resources": device.resource_count(),
            "host_memory_used": device.host_memory_used(),
            "last_seq": device.trace().last_seq(),
        }),
        ControlRequest::Trace { after, resource } => {
            json!({"ok": true, "events": device.events(after, resource)})
        }
        ControlRequest::Fault {
            fail_attaches,
            corrupt_transfers,
            delay_command,
            delay_ms,
            clear,
        } => {
            if !backend.fault_injection() {
                return json!({"ok": false, "error": "fault injection is off: start the daemon \
                    with --allow-fault-injection (or a --fault-* option)"});
            }
            // Check everything before changing anything: a refused request
            // leaves the faults as they were.
            if let Some(ms) = delay_ms.filter(|&ms| ms > MAX_DELAY_MS) {
                return json!({"ok": false,
                    "error": format!("delay_ms {ms} is more than {MAX_DELAY_MS}")});
            }
            let delay = match delay_command {
                Some(name) => match ctrl_type::from_name(&name) {
                    Some(code) => Some((code, delay_ms.unwrap_or(0))),
                    None => {
                        return json!({"ok": false, "error": format!("unknown command {name:?}")})
                    }
                },
                None => None,
            };
            let faults = device.faults_mut();
            if clear {
                *faults = Default::default();
            }
            if let Some(n) = fail_attaches {
                faults.fail_attaches = n;
            }
            if let Some(n) = corrupt_transfers {
                faults.corrupt_transfers = n;
            }
            match delay {
                Some((code, 0)) => {
                    faults.delay_ms.remove(&code);
                }
                Some((code, ms)) => {
                    faults.delay_ms.insert(code, ms);
                }
                None => {}
            }
            let delays: serde_json::Map<String, Value> = faults
                .delay_ms
                .iter()
                .map(|(code, ms)| (ctrl_type::name(*code).to_string(), json!(ms)))
                .collect();
            json!({
                "ok": true,
                "fail_attaches": faults.fail_attaches,
                "corrupt_transfers": faults.corrupt_transfers,
                "delay_ms": delays,
            })
        }
        ControlRequest::Subscribe => {
            json!({"ok": false, "error": "subscribe takes over the connection"})
        }
    }
}

/// Hands each live resource (or just `id`) to `emit`, in id order. The
/// device lock is held only to take each one's snapshot and to read each
/// band of its host copy, never across a whole hash, so that a client
/// polling this does not hold up the queues.
fn resources(
    backend: &ControlHandle,
    id: Option<u32>,
    hashes: bool,
    mut emit: impl FnMut(ResourceInfo) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let ids = match id {
        Some(id) => vec![id],
        None => backend.device().resource_ids(),
    };
    for id in ids {
        let snapshot = backend.device().snapshot(id);
        let Some(snapshot) = snapshot else {
            // Gone since the ids were listed.
            continue;
        };
        let info = if hashes {
            snapshot.into_info(|id, version, rows, dst| {
                backend.device().read_host_band(id, version, rows, dst)
            })
        } else {
            snapshot.info
        };
        emit(info)?;
    }
    Ok(())
}

/// The `resources` reply, written one resource at a time.
fn write_resources(
    out: &mut UnixStream,
    backend: &ControlHandle,
    id: Option<u32>,
    hashes: bool,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(out);
    out.write_all(br#"{"ok":true,"resources":["#)?;
    let mut first = true;
    resources(backend, id, hashes, |info| {
        if !std::mem::take(&mut first) {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut out, &info).map_err(std::io::Error::from)
    })?;
    out.write_all(b"]}\n")?;
    out.flush()
}

fn subscribe(mut out: UnixStream, backend: &ControlHandle) {
    let (events, last_seq) = {
        let mut device = backend.device();
        let trace = device.trace_mut();
        (trace.subscribe(), trace.last_seq())
    };
    if writeln!(
        out,
        "{}",
        json!({"ok": true, "subscribed": true, "last_seq": last_seq})
    )
    .is_err()
    {
        return;
    }
    // Ends when the client hangs up (the write fails) or the trace goes.
    for event in events {
        let line = serde_json::to_string(&event).unwrap_or_default();
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
}
