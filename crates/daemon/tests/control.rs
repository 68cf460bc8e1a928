//! The control socket: status, the live event stream, fault injection,
//! and refusal of bad requests.

mod common;

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use common::*;
use gpuswap_api::control::{
    ArmedFaults, Backing, Event, EventKind, Fault, InjectedFault, Request, Resources,
};
use gpuswap_frontend::{commands, Fence, FrontendConfig, GpuFrontend, Pages, Placement, QueueId};
use gpuswap_protocol::wire::ResourceId;
use gpuswap_protocol::{ctrl_type, features, format, ErrorCode};
use gpuswap_testkit::{pattern, poll_until, ControlClient, ControlError};
use serde_json::{json, Value};
use vm_memory::ByteValued;

const FMT: u32 = format::B8G8R8X8_UNORM;
const VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_NOTIFY_ON_EMPTY: legacy only, not for a modern device.
const NOTIFY_ON_EMPTY: u64 = 1 << 24;

#[test]
fn status_shows_identity_limits_and_acked_features() {
    let d = Daemon::spawn(
        "status",
        &["--max-host-memory", "64M", "--max-entries", "1000"],
    );
    let mut ctl = d.ctl();
    let st = ctl.status().unwrap();
    assert_eq!(st.pid, d.pid());
    assert_eq!(st.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(st.acked_features, "0x0", "no frontend yet");
    assert_eq!((st.resources, st.host_memory_used), (0, 0));
    assert_eq!((st.max_host_memory, st.max_entries), (64 << 20, 1000));

    let _gpu = d.connect(FrontendConfig::default());
    assert_eq!(
        _gpu.negotiated().device_features & NOTIFY_ON_EMPTY,
        0,
        "a modern device does not offer the legacy NOTIFY_ON_EMPTY"
    );
    let acked = ctl.status().unwrap().acked();
    for bit in [
        features::VIRTIO_GPU_F_EDID,
        features::VIRTIO_GPU_F_RESOURCE_UUID,
        features::VIRTIO_GPU_F_RESOURCE_BLOB,
    ] {
        assert_ne!(acked & (1 << bit), 0, "bit {bit} not acked: {acked:#x}");
    }
    assert_ne!(acked & VERSION_1, 0);
    assert_eq!(acked & (1 << features::VIRTIO_GPU_F_VIRGL), 0);

    // Without the blob feature asked for, it is not acked.
    drop(_gpu);
    d.wait_status("disconnect", |s| s.acked_features == "0x0");
    let _gpu = d.connect(FrontendConfig {
        gpu_features: 1 << features::VIRTIO_GPU_F_EDID,
        ..Default::default()
    });
    let acked = ctl.status().unwrap().acked();
    assert_eq!(acked & (1 << features::VIRTIO_GPU_F_RESOURCE_BLOB), 0);
    assert_ne!(acked & (1 << features::VIRTIO_GPU_F_EDID), 0);
}

#[test]
fn subscribe_streams_events_live() {
    let d = Daemon::spawn("subscribe", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut sub = d.ctl();
    let first = sub.subscribe().unwrap();
    assert!(first.subscribed);
    let mut last = first.last_seq;
    let mut ctl = d.ctl();
    assert_eq!(ctl.last_seq(), last);

    let p = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    type Step = Box<dyn FnMut(&mut GpuFrontend)>;
    let mut steps: Vec<(Step, &str)> = vec![
        (
            Box::new(|g| g.resource_create_2d(1, FMT, 16, 16).unwrap()),
            "create",
        ),
        (
            Box::new(move |g| g.attach_backing(1, &p.entries()).unwrap()),
            "attach",
        ),
        (
            Box::new(|g| g.transfer_to_host_2d(1, rect(0, 0, 16, 16), 0).unwrap()),
            "transfer",
        ),
        (Box::new(|g| g.detach_backing(1).unwrap()), "detach"),
        (
            Box::new(|g| assert!(g.detach_backing(1).is_err())),
            "violation",
        ),
        (Box::new(|g| g.resource_unref(1).unwrap()), "unref"),
    ];
    // Each event arrives before the next command is sent.
    for (step, kind) in steps.iter_mut() {
        step(&mut gpu);
        let e = sub.next_event().unwrap().expect("stream ended");
        assert_eq!(e.name(), *kind, "{e:?}");
        assert_eq!(e.resource_id, 1);
        assert_eq!(e.seq, last + 1, "seq must increase by one with no gaps");
        last = e.seq;
        // The other connection is served meanwhile.
        assert_eq!(ctl.last_seq(), last);
    }
    // A second subscriber joins late and sees only what follows.
    let mut sub2 = d.ctl();
    assert_eq!(sub2.subscribe().unwrap().last_seq, last);
    gpu.resource_create_2d(2, FMT, 8, 8).unwrap();
    for s in [&mut sub, &mut sub2] {
        let e = s.next_event().unwrap().expect("stream ended");
        assert_eq!((e.name(), e.seq), ("create", last + 1));
    }
    // A subscriber that hangs up does not disturb the daemon.
    drop(sub2);
    gpu.resource_unref(2).unwrap();
    assert_eq!(sub.next_event().unwrap().unwrap().name(), "unref");
}

#[test]
fn fault_fail_attaches_fails_exactly_two() {
    let d = Daemon::spawn("failattach", &["--allow-fault-injection"]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    gpu.resource_create_2d(1, FMT, 16, 16).unwrap();
    let p = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    let r = ctl.fault(fail_attaches(2)).unwrap();
    assert_eq!(r.fail_attaches, 2);
    let seq0 = ctl.last_seq();
    for i in 0..2 {
        assert_eq!(
            gpu.attach_backing(1, &p.entries())
                .unwrap_err()
                .device_error(),
            Some(ErrorCode::OutOfMemory),
            "attach {i}"
        );
        let r = ctl.live(1);
        assert_eq!((r.backing, r.generation), (Backing::Detached, 0));
    }
    gpu.attach_backing(1, &p.entries()).unwrap();
    assert_eq!(ctl.live(1).generation, 1);
    let events = ctl.trace(seq0, Some(1)).unwrap();
    let kinds: Vec<_> = events.iter().map(Event::name).collect();
    assert_eq!(kinds, ["fault", "fault", "attach"]);
    assert!(events_of(&events, "fault").iter().all(|e| matches!(
        e.kind,
        EventKind::Fault {
            fault: InjectedFault::FailAttach
        }
    )));
    let c = ctl.counters().unwrap().counters;
    assert_eq!(c.faults_injected, 2);
    assert_eq!(c.errors["resource_attach_backing"], 2);
    assert_eq!(
        c.violations, 0,
        "an injected failure is not a guest violation"
    );
    // Spent: later attaches succeed.
    gpu.detach_backing(1).unwrap();
    gpu.attach_backing(1, &p.entries()).unwrap();
    assert_eq!(armed(&mut ctl).fail_attaches, 0);
}

#[test]
fn fault_delay_command_delays_completion_not_the_control_socket() {
    let d = Daemon::spawn("delay", &["--allow-fault-injection"]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    gpu.resource_create_2d(1, FMT, 16, 16).unwrap();
    let p = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    gpu.attach_backing(1, &p.entries()).unwrap();
    let r = ctl.fault(delay("resource_detach_backing", 200)).unwrap();
    assert_eq!(r.delay_ms, delays(&[("resource_detach_backing", 200)]));

    let fence = Fence::new(9);
    let req = commands::encode_request(
        &commands::request_header(ctrl_type::RESOURCE_DETACH_BACKING, Some(fence)),
        ResourceId {
            resource_id: 1,
            padding: 0,
        }
        .as_slice(),
        &[],
    );
    let t0 = Instant::now();
    let token = gpu.submit_async(QueueId::Control, &req, 24).unwrap();
    // The device handles the detach at once; only the completion waits.
    // The control socket answers during the delay.
    let seen = loop {
        if !ctl.live(1).is_attached() {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_millis(200),
            "control socket blocked"
        );
    };
    let status_at = {
        ctl.status().unwrap();
        t0.elapsed()
    };
    let done = gpu.wait_for(QueueId::Control, token).unwrap();
    let completed = t0.elapsed();
    commands::check_response(&done.response, ctrl_type::RESP_OK_NODATA, Some(fence)).unwrap();
    assert!(
        completed >= Duration::from_millis(200),
        "completed after {completed:?}"
    );
    assert!(
        seen < Duration::from_millis(200) && status_at < Duration::from_millis(200),
        "control answers at {seen:?} and {status_at:?}, completion at {completed:?}"
    );

    // The queue is FIFO: a request behind a delayed one waits for it.
    let t = Instant::now();
    let fence = Fence::new(11);
    let detach = commands::encode_request(
        &commands::request_header(ctrl_type::RESOURCE_DETACH_BACKING, Some(fence)),
        ResourceId {
            resource_id: 1,
            padding: 0,
        }
        .as_slice(),
        &[],
    );
    gpu.attach_backing(1, &p.entries()).unwrap();
    let info = commands::encode_request(
        &commands::request_header(ctrl_type::GET_DISPLAY_INFO, None),
        &[],
        &[],
    );
    let done = gpu
        .submit_pipelined(QueueId::Control, [detach.as_slice(), info.as_slice()], 408)
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    commands::check_response(&done[0].response, ctrl_type::RESP_OK_NODATA, Some(fence)).unwrap();
    commands::check_response(&done[1].response, ctrl_type::RESP_OK_DISPLAY_INFO, None).unwrap();

    // Other commands are not delayed; delay 0 removes the fault.
    let t = Instant::now();
    gpu.attach_backing(1, &p.entries()).unwrap();
    assert!(t.elapsed() < Duration::from_millis(200));
    let r = ctl.fault(delay("resource_detach_backing", 0)).unwrap();
    assert_eq!(r.delay_ms, delays(&[]));
    let t = Instant::now();
    gpu.fenced(Fence::new(10)).detach_backing(1).unwrap();
    assert!(t.elapsed() < Duration::from_millis(200));

    // clear removes every fault.
    ctl.fault(Fault {
        fail_attaches: Some(3),
        corrupt_transfers: Some(4),
        ..delay("resource_flush", 5)
    })
    .unwrap();
    let r = ctl.fault(clear()).unwrap();
    assert_eq!(r, ArmedFaults::default());
}

fn fail_attaches(n: u32) -> Fault {
    Fault {
        fail_attaches: Some(n),
        ..Fault::default()
    }
}

fn corrupt_transfers(n: u32) -> Fault {
    Fault {
        corrupt_transfers: Some(n),
        ..Fault::default()
    }
}

fn delay(command: &str, ms: u64) -> Fault {
    Fault {
        delay_command: Some(command.into()),
        delay_ms: Some(ms),
        ..Fault::default()
    }
}

fn clear() -> Fault {
    Fault {
        clear: true,
        ..Fault::default()
    }
}

/// What is armed (a `fault` request that changes nothing).
fn armed(ctl: &mut ControlClient) -> ArmedFaults {
    ctl.fault(Fault::default()).unwrap()
}

fn delays(d: &[(&str, u64)]) -> BTreeMap<String, u64> {
    d.iter().map(|&(name, ms)| (name.to_string(), ms)).collect()
}

/// A `kB` field of /proc/PID/status (e.g. `VmRSS:`), in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// What a stress harness does: the live resources whose host copy does
/// not hash to what the guest wrote (`guest`: id -> content).
fn mismatched(ctl: &mut ControlClient, guest: &[(u32, &[u8])]) -> Vec<u32> {
    guest
        .iter()
        .filter(|(id, content)| ctl.live(*id).host_hash != some_hash(content))
        .map(|(id, _)| *id)
        .collect()
}

/// The `corrupt_transfer` fault events of resource `id` after `seq`: each
/// one's generation and host offset.
fn corruptions(ctl: &mut ControlClient, seq: u64, id: u32) -> Vec<(u64, u64)> {
    ctl.trace(seq, Some(id))
        .unwrap()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Fault {
                fault: InjectedFault::CorruptTransfer { host_offset },
            } => Some((e.generation, host_offset)),
            _ => None,
        })
        .collect()
}

#[test]
fn fault_corrupt_transfers_spoils_one_host_copy_and_the_trace_names_it() {
    let d = Daemon::spawn("corrupt", &["--allow-fault-injection"]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    let (w, h) = (32u32, 16u32);
    let one = pattern((w * h * 4) as usize, 61);
    let two = pattern((w * h * 4) as usize, 62);
    upload_2d(&mut gpu, 1, (w, h), &one);
    gpu.resource_create_2d(2, FMT, w, h).unwrap();
    let p2 = gpu.ram_mut().alloc(2, Placement::Scattered).unwrap();
    gpu.ram().write_entries(&p2.entries(), 0, &two).unwrap();
    gpu.attach_backing(2, &p2.entries()).unwrap();
    assert_eq!(mismatched(&mut ctl, &[(1, &one)]), Vec::<u32>::new());

    let r = ctl.fault(corrupt_transfers(1)).unwrap();
    assert_eq!(
        r,
        ArmedFaults {
            corrupt_transfers: 1,
            ..ArmedFaults::default()
        }
    );
    let seq0 = ctl.last_seq();
    // A failing transfer does not use the fault up.
    assert_eq!(
        gpu.transfer_to_host_2d(2, rect(0, 0, w + 1, h), 0)
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::InvalidParameter)
    );
    assert_eq!(armed(&mut ctl).corrupt_transfers, 1);
    // The guest sees a successful transfer; the host copy is off by one
    // byte, the backing is what the guest wrote.
    gpu.transfer_to_host_2d(2, rect(0, 0, w, h), 0).unwrap();
    let info = ctl.live(2);
    assert_ne!(info.host_hash, some_hash(&two));
    let mut spoilt = two.clone();
    spoilt[0] ^= 0xff;
    assert_eq!(info.host_hash, some_hash(&spoilt));
    assert_eq!(info.backing_hash, some_hash(&two));
    assert_eq!(
        mismatched(&mut ctl, &[(1, &one), (2, &two)]),
        vec![2],
        "the harness names resource 2"
    );
    assert_eq!(corruptions(&mut ctl, seq0, 2), [(1, 0)]);
    assert!(corruptions(&mut ctl, seq0, 1).is_empty());
    let c = ctl.counters().unwrap().counters;
    assert_eq!((c.faults_injected, c.violations), (1, 0));

    // Spent: the next transfers are clean, and one repairs resource 2.
    assert_eq!(armed(&mut ctl).corrupt_transfers, 0);
    gpu.transfer_to_host_2d(1, rect(0, 0, w, h), 0).unwrap();
    gpu.transfer_to_host_2d(2, rect(0, 0, w, h), 0).unwrap();
    assert_eq!(
        mismatched(&mut ctl, &[(1, &one), (2, &two)]),
        Vec::<u32>::new()
    );
    assert_eq!(ctl.counters().unwrap().counters.faults_injected, 1);
}

#[test]
fn faults_armed_on_the_command_line_fire_from_the_first_frontend() {
    let d = Daemon::spawn(
        "fault-cli",
        &[
            "--fault-corrupt-transfers",
            "1",
            "--fault-fail-attaches",
            "1",
            "--fault-delay",
            "resource_flush=5",
            "--fault-delay",
            "get_edid=7",
        ],
    );
    let mut ctl = d.ctl();
    assert_eq!(
        armed(&mut ctl),
        ArmedFaults {
            fail_attaches: 1,
            corrupt_transfers: 1,
            delay_ms: delays(&[("resource_flush", 5), ("get_edid", 7)]),
        }
    );
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let (w, h) = (16u32, 16u32);
    let pix = pattern((w * h * 4) as usize, 71);
    gpu.resource_create_2d(1, FMT, w, h).unwrap();
    let p = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    gpu.ram().write_entries(&p.entries(), 0, &pix).unwrap();
    assert_eq!(
        gpu.attach_backing(1, &p.entries())
            .unwrap_err()
            .device_error(),
        Some(ErrorCode::OutOfMemory)
    );
    gpu.attach_backing(1, &p.entries()).unwrap();
    // A sub-rect: its first byte is row 2, pixel 3 of the host copy.
    let first = 2 * w * 4 + 3 * 4;
    gpu.transfer_to_host_2d(1, rect(3, 2, 4, 4), u64::from(first))
        .unwrap();
    let info = ctl.live(1);
    assert_ne!(info.host_hash, info.backing_hash);
    assert_eq!(info.backing_hash, some_hash(&pix));
    assert_eq!(corruptions(&mut ctl, 0, 1), [(1, u64::from(first))]);
    // Both armed faults fired once; the full transfer then is clean.
    gpu.transfer_to_host_2d(1, rect(0, 0, w, h), 0).unwrap();
    assert_eq!(ctl.live(1).host_hash, some_hash(&pix));
    assert_eq!(ctl.counters().unwrap().counters.faults_injected, 2);
    let r = armed(&mut ctl);
    assert_eq!((r.fail_attaches, r.corrupt_transfers), (0, 0));
}

#[test]
fn bad_control_requests_get_ok_false() {
    let d = Daemon::spawn("badctl", &["--allow-fault-injection"]);
    let mut ctl = d.ctl();
    for line in [
        "not json",
        "{}",
        "[1, 2]",
        r#"{"cmd": "nope"}"#,
        // Misspelt arguments are refused, not ignored. (Argument-less
        // requests such as status tolerate extra fields: serde cannot deny
        // them on unit variants of an internally tagged enum.)
        r#"{"cmd": "fault", "fail_attach": 2}"#,
        r#"{"cmd": "trace", "afer": 5}"#,
        r#"{"cmd": "resources", "idd": 3}"#,
        r#"{"cmd": "resources", "id": -1}"#,
        r#"{"cmd": "trace", "after": "yesterday"}"#,
        r#"{"cmd": "fault", "fail_attaches": -2}"#,
        r#"{"cmd": "fault", "delay_command": "warp_drive", "delay_ms": 5}"#,
        r#"{"cmd": "fault", "corrupt_transfer": 1}"#,
        r#"{"cmd": "fault", "corrupt_transfers": -1}"#,
        r#"{"cmd": "fault", "corrupt_transfers": "one"}"#,
        // Refused as a whole: the valid knobs beside it are not applied.
        r#"{"cmd": "fault", "fail_attaches": 2, "corrupt_transfers": 2, "delay_command": "warp_drive", "delay_ms": 5}"#,
        // Three years of delay: bounded at one minute.
        r#"{"cmd": "fault", "fail_attaches": 2, "delay_command": "resource_detach_backing", "delay_ms": 99999999999}"#,
        r#"{"cmd": "fault", "delay_command": "resource_detach_backing", "delay_ms": 60001}"#,
    ] {
        let r = ctl.send_line(line).unwrap().expect("a reply");
        assert_eq!(r["ok"], false, "{line} -> {r}");
        assert!(
            r["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{line}: no error message"
        );
        // The same connection keeps working.
        ctl.status().unwrap();
    }
    // A blank line is ignored, not answered.
    let r = ctl
        .send_line("\n{\"cmd\": \"counters\"}")
        .unwrap()
        .expect("a reply");
    assert_eq!(r["ok"], true);
    assert!(r["counters"].is_object());
    // A refused fault changed nothing.
    assert_eq!(armed(&mut ctl), ArmedFaults::default());
}

#[test]
fn disconnect_during_a_delayed_completion() {
    let mut d = Daemon::spawn("delay-disc", &["--allow-fault-injection"]);
    let mut ctl = d.ctl();
    let mut gpu = d.connect(FrontendConfig::default());
    gpu.resource_create_2d(1, FMT, 16, 16).unwrap();
    let p = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    gpu.attach_backing(1, &p.entries()).unwrap();
    ctl.fault(delay("resource_detach_backing", 300)).unwrap();
    let req = commands::encode_request(
        &commands::request_header(ctrl_type::RESOURCE_DETACH_BACKING, None),
        ResourceId {
            resource_id: 1,
            padding: 0,
        }
        .as_slice(),
        &[],
    );
    gpu.submit_async(QueueId::Control, &req, 24).unwrap();
    // Gone while the daemon sits on the completion.
    let seen = Instant::now();
    while ctl.live(1).is_attached() {
        assert!(seen.elapsed() < WAIT);
    }
    drop(gpu);
    d.wait_status("disconnect", |s| {
        s.resources == 0 && s.acked_features == "0x0"
    });
    d.assert_alive();
    ctl.fault(clear()).unwrap();
    let mut gpu = d.connect(FrontendConfig::default());
    gpu.resource_create_2d(1, FMT, 16, 16).unwrap();
    gpu.get_display_info().unwrap();
}

/// Whatever a local client does, the daemon's memory and threads stay
/// bounded: a request line without an end is cut off at 64 KiB (not
/// buffered whole), and clients past 32 at once are turned away with an
/// error, while the ones already connected keep working.
#[test]
fn hostile_control_clients_are_bounded() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;

    let d = Daemon::spawn("ctlbounds", &[]);
    let rss_kib = |pid: u32| status_kib(pid, "VmRSS:");
    let before = rss_kib(d.pid());

    // 64 MiB without a newline: the daemon answers and hangs up after the
    // first 64 KiB instead of reading on.
    let mut long = UnixStream::connect(&d.control).unwrap();
    long.set_read_timeout(Some(WAIT)).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..64 {
        match long.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break, // the daemon closed the connection
        }
    }
    let mut reply = String::new();
    let _ = BufReader::new(&long).read_line(&mut reply);
    let r: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
    assert_eq!(r["ok"], false);
    assert!(
        r["error"].as_str().unwrap().contains("longer than 65536"),
        "{r}"
    );
    let mut rest = Vec::new();
    let _ = long.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the connection stayed open");
    assert!(sent >= 64 << 10, "only {sent} bytes went out");
    let after = rss_kib(d.pid());
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );

    // 32 clients at once are served; the 33rd is told why it is not.
    let mut held: Vec<ControlClient> = (0..32).map(|_| d.ctl()).collect();
    let mut extra = UnixStream::connect(&d.control).unwrap();
    extra.set_read_timeout(Some(WAIT)).unwrap();
    let mut line = String::new();
    BufReader::new(&extra).read_line(&mut line).unwrap();
    let r: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("too many"), "{r}");
    let _ = writeln!(extra, "{{\"cmd\":\"status\"}}");
    for ctl in &mut held {
        ctl.status().unwrap();
    }
    // A client that leaves frees its place.
    drop(held.pop());
    let mut last = Value::Null;
    let back = poll_until(WAIT, || {
        let mut c = UnixStream::connect(&d.control).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        // Until the daemon has seen the client leave, it turns newcomers
        // away: it answers and hangs up, which can break our write (EPIPE)
        // or, with our request unread, our read (ECONNRESET).
        let mut line = String::new();
        let asked = writeln!(c, "{{\"cmd\":\"status\"}}")
            .and_then(|()| BufReader::new(&c).read_line(&mut line));
        last = match asked {
            Ok(_) => serde_json::from_str(&line).unwrap_or_else(|_| json!({ "unreadable": line })),
            Err(e) => json!({ "turned away": e.to_string() }),
        };
        (last["ok"] == true).then_some(())
    });
    assert!(back.is_some(), "the freed place never came back: {last}");
}

/// A monitoring client polling `resources` neither holds up the queues
/// while it hashes (the device lock is taken per snapshot and per band of
/// rows, never across a whole hash) nor makes a copy of any host copy.
#[test]
fn resources_hashes_without_holding_up_the_queues_or_copying_host_copies() {
    let d = Daemon::spawn("resources-poll", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let (w, h) = (4096, 2048);
    let contents: Vec<Vec<u8>> = (0..2).map(|i| pattern(w * h * 4, 70 + i)).collect();
    let _pages: Vec<Pages> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| upload_2d(&mut gpu, i as u32 + 1, (w as u32, h as u32), c))
        .collect();
    let mut ctl = d.ctl();
    for (i, content) in contents.iter().enumerate() {
        let r = ctl.live(i as u32 + 1);
        assert_eq!(r.host_hash, some_hash(content), "{r:?}");
        assert_eq!(r.backing_hash, some_hash(content), "{r:?}");
    }
    let bare = ctl.resources_matching(None, false).unwrap();
    for r in &bare {
        assert!(r.host_hash.is_none() && r.backing_hash.is_none(), "{r:?}");
        assert!(r.is_attached());
    }

    let hwm_kib = |pid: u32| status_kib(pid, "VmHWM:");
    // The requests below cycle through the frontend's bounce buffers in
    // guest RAM, which the daemon maps: have it touch all of them first.
    let requests_for = |gpu: &mut GpuFrontend, how_long: Duration| {
        let mut slowest = Duration::ZERO;
        let deadline = Instant::now() + how_long;
        while Instant::now() < deadline {
            let start = Instant::now();
            gpu.get_display_info().unwrap();
            slowest = slowest.max(start.elapsed());
        }
        slowest
    };
    requests_for(&mut gpu, Duration::from_secs(3));
    let hwm_before = hwm_kib(d.pid());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (mut ctl, stop) = (d.ctl(), stop.clone());
        std::thread::spawn(move || {
            let mut replies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || replies.len() < 3 {
                let start = Instant::now();
                let r: Resources = ctl
                    .request(&Request::Resources {
                        id: None,
                        hashes: true,
                    })
                    .unwrap();
                replies.push(start.elapsed());
                assert_eq!(r.resources.len(), 2);
            }
            replies
        })
    };
    let slowest = requests_for(&mut gpu, Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let replies = poller.join().unwrap();
    let quickest_reply = *replies.iter().min().unwrap();
    assert!(
        slowest < quickest_reply / 4,
        "a request waited {slowest:?} while `resources` replies took {quickest_reply:?} \
         or more ({} replies)",
        replies.len()
    );
    let grown = hwm_kib(d.pid()).saturating_sub(hwm_before);
    assert!(
        grown < 8 * 1024,
        "peak RSS grew by {grown} KiB while hashing two 32 MiB host copies"
    );
}

/// The control socket is its owner's alone, and it changes fault
/// injection only for a daemon started with it allowed.
#[test]
fn fault_injection_needs_the_opt_in_and_the_socket_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;

    let d = Daemon::spawn("faults-off", &[]);
    let mode = std::fs::metadata(&d.control).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");
    let mut ctl = d.ctl();
    for fault in [fail_attaches(1), delay("resource_flush", 100), clear()] {
        match ctl.fault(fault.clone()) {
            Err(ControlError::Refused { error, .. }) => {
                assert!(error.contains("--allow-fault-injection"), "{error}")
            }
            other => panic!("{fault:?} -> {other:?}"),
        }
    }
    // Refused means nothing armed: the first attach succeeds.
    let mut gpu = d.connect(FrontendConfig::default().headless());
    gpu.resource_create_2d(1, FMT, 16, 16).unwrap();
    let pages = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    gpu.attach_backing(1, &pages.entries()).unwrap();
    assert_eq!(ctl.counters().unwrap().counters.faults_injected, 0);

    // A fault armed on the command line is an opt-in of its own.
    let armed = Daemon::spawn("faults-armed", &["--fault-fail-attaches", "1"]);
    let r = armed.ctl().fault(fail_attaches(0)).unwrap();
    assert_eq!(r.fail_attaches, 0, "{r:?}");
}
