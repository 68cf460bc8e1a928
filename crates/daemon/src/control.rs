//! The control socket: line-delimited JSON requests and responses for the
//! harness, tests and people debugging races. See the README for the
//! protocol.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread;

use gpuswap_protocol::ctrl_type;
use log::{info, warn};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::backend::ControlHandle;

/// One request line.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
enum ControlRequest {
    /// Daemon identity and what the frontend negotiated.
    Status,
    /// Live resources with hashes; `id` narrows to one.
    Resources { id: Option<u32> },
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

/// Serves the control socket at `path` in a background thread.
pub fn serve(path: &Path, backend: ControlHandle) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    info!("control socket at {}", path.display());
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        let backend = backend.clone();
                        let spawned = thread::Builder::new()
                            .name("control-client".into())
                            .spawn(move || client(stream, backend));
                        if let Err(e) = spawned {
                            warn!("control socket: cannot start a client thread: {e}");
                        }
                    }
                    Err(e) => warn!("control socket: accept failed: {e}"),
                }
            }
        })?;
    Ok(())
}

fn client(stream: UnixStream, backend: ControlHandle) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut out = stream;
    for line in BufReader::new(read_half).lines() {
        let Ok(line) = line else {
            return;
        };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<ControlRequest>(&line) {
            Ok(ControlRequest::Subscribe) => {
                subscribe(out, &backend);
                return;
            }
            Ok(request) => handle(request, &backend),
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}

fn handle(request: ControlRequest, backend: &ControlHandle) -> Value {
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
        ControlRequest::Resources { id: Some(id) } => match device.resource_info(id) {
            Some(info) => json!({"ok": true, "resources": [info]}),
            None => json!({"ok": true, "resources": []}),
        },
        ControlRequest::Resources { id: None } => {
            json!({"ok": true, "resources": device.resources()})
        }
        ControlRequest::Counters => json!({
            "ok": true,
            "counters": device.counters(),
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
            // Check everything before changing anything: a refused request
            // leaves the faults as they were.
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
