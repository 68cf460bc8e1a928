//! The control socket: line-delimited JSON requests and replies for the
//! harness, tests and people debugging races. The requests and replies
//! are the types of `gpuswap_api::control` (the README documents them);
//! this module serves them from the device behind the daemon's lock:
//! `resources.rs` lists resources with their hashes, `records.rs` turns
//! the device's trace events and counters into the protocol's.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use gpuswap_api::control as api;
pub use gpuswap_api::control::Request;
use gpuswap_protocol::ctrl_type;
use log::{info, warn};
use nix::sys::stat::{umask, Mode};
use serde::Serialize;
use serde_json::{json, Value};

use crate::backend::ControlHandle;

mod records;
mod resources;

use records::{device_counters, event};
use resources::{resources_of, write_resources};

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
                    let _ = writeln!(stream, "{}", error_reply(error));
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
            let _ = writeln!(out, "{}", error_reply(error));
            return;
        };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match parse(&line) {
            Ok(Request::Subscribe) => {
                subscribe(out, &backend);
                return;
            }
            Ok(Request::Resources { id, hashes }) => {
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
pub fn parse(line: &str) -> Result<Request, Value> {
    serde_json::from_str(line).map_err(|e| error_reply(format!("bad request: {e}")))
}

/// `{"ok": true}` with the fields of `reply`.
fn ok(reply: &impl Serialize) -> Value {
    let mut value = serde_json::to_value(reply).unwrap_or_else(|_| json!({}));
    if let Some(fields) = value.as_object_mut() {
        fields.insert("ok".into(), Value::Bool(true));
    }
    value
}

/// `{"ok": false, "error": error}`.
fn error_reply(error: impl Into<String>) -> Value {
    json!({"ok": false, "error": error.into()})
}

/// The reply to one request ([`Request::Subscribe`] excepted: it takes
/// over the connection).
pub fn handle(request: Request, backend: &ControlHandle) -> Value {
    let acked = backend.acked_features();
    let mut device = backend.device();
    match request {
        Request::Status => ok(&api::Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            acked_features: format!("{acked:#x}"),
            resources: device.resource_count() as u64,
            host_memory_used: device.host_memory_used(),
            max_host_memory: device.config().max_host_memory,
            max_entries: device.config().max_entries,
        }),
        Request::Resources { id, hashes } => {
            drop(device);
            let mut resources = Vec::new();
            let listed = resources_of(backend, id, hashes, |resource| {
                resources.push(resource);
                Ok(())
            });
            match listed {
                Ok(()) => ok(&api::Resources { resources }),
                Err(e) => error_reply(e.to_string()),
            }
        }
        Request::Counters => ok(&api::Counters {
            counters: device_counters(device.counters()),
            ring_errors: backend.ring_errors(),
            resources: device.resource_count() as u64,
            host_memory_used: device.host_memory_used(),
            last_seq: device.trace().last_seq(),
        }),
        Request::Trace { after, resource } => ok(&api::Events {
            events: device.events(after, resource).iter().map(event).collect(),
        }),
        Request::Fault(api::Fault {
            fail_attaches,
            corrupt_transfers,
            delay_command,
            delay_ms,
            clear,
        }) => {
            if !backend.fault_injection() {
                return error_reply(
                    "fault injection is off: start the daemon \
                    with --allow-fault-injection (or a --fault-* option)",
                );
            }
            // Check everything before changing anything: a refused request
            // leaves the faults as they were.
            if let Some(ms) = delay_ms.filter(|&ms| ms > MAX_DELAY_MS) {
                return error_reply(format!("delay_ms {ms} is more than {MAX_DELAY_MS}"));
            }
            let delay = match delay_command {
                Some(name) => match ctrl_type::from_name(&name) {
                    Some(code) => Some((code, delay_ms.unwrap_or(0))),
                    None => return error_reply(format!("unknown command {name:?}")),
                },
                None => None,
            };
            let faults = device.faults_mut();
            let mut delays = backend.delays();
            if clear {
                *faults = Default::default();
                delays.clear();
            }
            if let Some(n) = fail_attaches {
                faults.fail_attaches = n;
            }
            if let Some(n) = corrupt_transfers {
                faults.corrupt_transfers = n;
            }
            match delay {
                Some((code, 0)) => {
                    delays.remove(&code);
                }
                Some((code, ms)) => {
                    delays.insert(code, ms);
                }
                None => {}
            }
            ok(&api::ArmedFaults {
                fail_attaches: faults.fail_attaches,
                corrupt_transfers: faults.corrupt_transfers,
                delay_ms: delays
                    .iter()
                    .map(|(code, ms)| (ctrl_type::name(*code).to_string(), *ms))
                    .collect(),
            })
        }
        Request::Subscribe => error_reply("subscribe takes over the connection"),
    }
}

fn subscribe(mut out: UnixStream, backend: &ControlHandle) {
    let (events, last_seq) = {
        let mut device = backend.device();
        let trace = device.trace_mut();
        (trace.subscribe(), trace.last_seq())
    };
    let subscribed = api::Subscribed {
        subscribed: true,
        last_seq,
    };
    if writeln!(out, "{}", ok(&subscribed)).is_err() {
        return;
    }
    // Ends when the client hangs up (the write fails) or the trace goes.
    for e in events {
        let line = serde_json::to_string(&event(&e)).unwrap_or_default();
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
}
