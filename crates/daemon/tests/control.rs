//! The control socket: status, the live event stream, fault injection,
//! and refusal of bad requests.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gpuswap_frontend::{commands, Fence, FrontendConfig, GpuFrontend, Placement, QueueId};
use gpuswap_protocol::wire::ResourceId;
use gpuswap_protocol::{ctrl_type, features, format, ErrorCode};
use serde_json::{json, Value};
use vm_memory::ByteValued;

const FMT: u32 = format::B8G8R8X8_UNORM;
const VERSION_1: u64 = 1 << 32;

#[test]
fn status_shows_identity_limits_and_acked_features() {
    let d = Daemon::spawn(
        "status",
        &["--max-host-memory", "64M", "--max-entries", "1000"],
    );
    let mut ctl = d.ctl();
    let st = ctl.status();
    assert_eq!(st["pid"], d.pid());
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["acked_features"], "0x0", "no frontend yet");
    assert_eq!(
        (st["resources"].clone(), st["host_memory_used"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(
        (st["max_host_memory"].clone(), st["max_entries"].clone()),
        (json!(64 << 20), json!(1000))
    );

    let _gpu = d.connect(FrontendConfig::default());
    let acked = acked_features(&ctl.status());
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
    d.wait_status("disconnect", |s| s["acked_features"] == "0x0");
    let _gpu = d.connect(FrontendConfig {
        gpu_features: 1 << features::VIRTIO_GPU_F_EDID,
        ..Default::default()
    });
    let acked = acked_features(&ctl.status());
    assert_eq!(acked & (1 << features::VIRTIO_GPU_F_RESOURCE_BLOB), 0);
    assert_ne!(acked & (1 << features::VIRTIO_GPU_F_EDID), 0);
}

#[test]
fn subscribe_streams_events_live() {
    let d = Daemon::spawn("subscribe", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut sub = d.ctl();
    let first = sub.request(json!({"cmd": "subscribe"}));
    assert_eq!(
        (first["ok"].clone(), first["subscribed"].clone()),
        (json!(true), json!(true))
    );
    let mut last = first["last_seq"].as_u64().expect("last_seq");
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
        let e = sub.read_line().expect("stream ended");
        assert_eq!(e["event"], *kind, "{e}");
        assert_eq!(e["resource_id"], 1);
        let seq = e["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1, "seq must increase by one with no gaps");
        last = seq;
        // The other connection is served meanwhile.
        assert_eq!(ctl.last_seq(), last);
    }
    // A second subscriber joins late and sees only what follows.
    let mut sub2 = d.ctl();
    let s2 = sub2.request(json!({"cmd": "subscribe"}));
    assert_eq!(s2["last_seq"], last);
    gpu.resource_create_2d(2, FMT, 8, 8).unwrap();
    for s in [&mut sub, &mut sub2] {
        let e = s.read_line().expect("stream ended");
        assert_eq!(
            (e["event"].clone(), e["seq"].clone()),
            (json!("create"), json!(last + 1))
        );
    }
    // A subscriber that hangs up does not disturb the daemon.
    drop(sub2);
    gpu.resource_unref(2).unwrap();
    assert_eq!(sub.read_line().unwrap()["event"], "unref");
}

#[test]
fn fault_fail_attaches_fails_exactly_two() {
    let d = Daemon::spawn("failattach", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    gpu.resource_create_2d(1, FMT, 16, 16).unwrap();
    let p = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    let r = ctl.fault(json!({"fail_attaches": 2}));
    assert_eq!(r["fail_attaches"], 2);
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
        assert_eq!(
            (r["backing"].clone(), r["generation"].clone()),
            (json!("detached"), json!(0))
        );
    }
    gpu.attach_backing(1, &p.entries()).unwrap();
    assert_eq!(ctl.live(1)["generation"], 1);
    let events = ctl.trace(seq0, Some(1));
    let kinds: Vec<_> = events.iter().map(|e| e["event"].clone()).collect();
    assert_eq!(kinds, vec![json!("fault"), json!("fault"), json!("attach")]);
    assert!(events_of(&events, "fault")
        .iter()
        .all(|e| e["fault"] == "fail_attach"));
    let c = ctl.counters()["counters"].clone();
    assert_eq!(c["faults_injected"], 2);
    assert_eq!(c["errors"]["resource_attach_backing"], 2);
    assert_eq!(
        c["violations"], 0,
        "an injected failure is not a guest violation"
    );
    // Spent: later attaches succeed.
    gpu.detach_backing(1).unwrap();
    gpu.attach_backing(1, &p.entries()).unwrap();
    assert_eq!(ctl.fault(json!({}))["fail_attaches"], 0);
}

#[test]
fn fault_delay_command_delays_completion_not_the_control_socket() {
    let d = Daemon::spawn("delay", &[]);
    let mut gpu = d.connect(FrontendConfig::default().headless());
    let mut ctl = d.ctl();
    gpu.resource_create_2d(1, FMT, 16, 16).unwrap();
    let p = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    gpu.attach_backing(1, &p.entries()).unwrap();
    let r = ctl.fault(json!({"delay_command": "resource_detach_backing", "delay_ms": 200}));
    assert_eq!(r["delay_ms"], json!({"resource_detach_backing": 200}));

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
        let r = ctl.live(1);
        if r["backing"] == "detached" {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_millis(200),
            "control socket blocked"
        );
    };
    let status_at = {
        ctl.status();
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
    let r = ctl.fault(json!({"delay_command": "resource_detach_backing", "delay_ms": 0}));
    assert_eq!(r["delay_ms"], json!({}));
    let t = Instant::now();
    gpu.fenced(Fence::new(10)).detach_backing(1).unwrap();
    assert!(t.elapsed() < Duration::from_millis(200));

    // clear removes every fault.
    ctl.fault(json!({"delay_command": "resource_flush", "delay_ms": 5, "fail_attaches": 3}));
    let r = ctl.fault(json!({"clear": true}));
    assert_eq!(
        (r["fail_attaches"].clone(), r["delay_ms"].clone()),
        (json!(0), json!({}))
    );
}

#[test]
fn bad_control_requests_get_ok_false() {
    let d = Daemon::spawn("badctl", &[]);
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
    ] {
        let r: Value = ctl.raw(line);
        assert_eq!(r["ok"], false, "{line} -> {r}");
        assert!(
            r["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{line}: no error message"
        );
        // The same connection keeps working.
        assert_eq!(ctl.status()["ok"], true);
    }
    // A blank line is ignored, not answered.
    let r = ctl.raw("\n{\"cmd\": \"counters\"}");
    assert_eq!(r["ok"], true);
    assert!(r["counters"].is_object());
    // A refused fault changed nothing.
    let r = ctl.fault(json!({}));
    assert_eq!(
        (r["fail_attaches"].clone(), r["delay_ms"].clone()),
        (json!(0), json!({}))
    );
}

#[test]
fn disconnect_during_a_delayed_completion() {
    let mut d = Daemon::spawn("delay-disc", &[]);
    let mut ctl = d.ctl();
    let mut gpu = d.connect(FrontendConfig::default());
    gpu.resource_create_2d(1, FMT, 16, 16).unwrap();
    let p = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    gpu.attach_backing(1, &p.entries()).unwrap();
    ctl.fault(json!({"delay_command": "resource_detach_backing", "delay_ms": 300}));
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
    while ctl.live(1)["backing"] != "detached" {
        assert!(seen.elapsed() < WAIT);
    }
    drop(gpu);
    d.wait_status("disconnect", |s| {
        s["resources"] == 0 && s["acked_features"] == "0x0"
    });
    d.assert_alive();
    ctl.fault(json!({"clear": true}));
    let mut gpu = d.connect(FrontendConfig::default());
    gpu.resource_create_2d(1, FMT, 16, 16).unwrap();
    gpu.get_display_info().unwrap();
}
