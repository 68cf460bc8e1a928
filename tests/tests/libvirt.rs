//! gpuswap-daemon as libvirt runs it: libvirt 11.3 (qemu:///system, started
//! without systemd) finds the daemon from its vhost-user descriptor, runs
//! `--print-capabilities`, and spawns it with `--fd=N` on a connected
//! socketpair; the daemon takes its control socket from its configuration
//! file. The guest's virtio-gpu runs on it, a workload with evictions keeps
//! every byte, and neither a guest that ends nor `virsh destroy` leaves a
//! daemon behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gpuswap_harness::{tail, wait_for_agent, Agent, Control, Images, RunDir, BOOT_TIMEOUT};
use gpuswap_tests::assert_guest_ended_cleanly;
use gpuswap_tests::libvirt::{
    self, backend_pid, cmdline, process_alive, Domain, DomainSpec, Installed,
};
use serde_json::{json, Value};

const DOMAIN: &str = "gpuswap-libvirt-test";
const SEED: u64 = 0x11b7;

fn emulator() -> PathBuf {
    // The blob-capable QEMU when the test command built it; stock QEMU
    // (2D only) otherwise.
    std::env::var_os("GPUSWAP_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/qemu-system-x86_64"))
}

/// A started domain's daemon and guest.
struct Started {
    pid: u32,
    control_socket: PathBuf,
    control: Control,
    agent: Agent,
}

fn start(domain: &Domain, installed: &Installed, dir: &RunDir) -> Started {
    domain.start().expect("virsh start");
    let (pid, control_socket) = installed
        .wait_daemon(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\nQEMU log:\n{}", domain.qemu_log()));
    // libvirt spawned our binary, on a connected socket.
    let args = cmdline(pid);
    assert_eq!(
        args.first().map(PathBuf::from),
        Some(installed.binary.clone()),
        "{args:?}"
    );
    assert!(
        args.len() == 2 && args[1].starts_with("--fd="),
        "libvirt passes --fd only: {args:?}"
    );
    assert_eq!(backend_pid(&domain.name), Some(pid), "libvirt's pid file");
    // Its options came from the configuration file (this log is one).
    let log = installed.log(pid);
    assert!(
        log.contains("serving the frontend on the inherited connected socket"),
        "daemon log:\n{log}"
    );
    let mut agent = wait_for_agent(
        &dir.path("agent.sock"),
        &dir.path("serial.log"),
        BOOT_TIMEOUT,
        || match domain.state() {
            Ok(s) if s == "running" => None,
            other => Some(format!("the domain is {other:?}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nQEMU log:\n{}", domain.qemu_log()));
    agent.set_timeout(Duration::from_secs(300));
    let mut control = Control::connect(&control_socket).expect("control socket");
    // The guest's virtio-gpu driver negotiated with this daemon.
    let status = control.request(json!({"cmd": "status"})).expect("status");
    assert_eq!(status["pid"], json!(pid), "{status}");
    assert_ne!(status["acked_features"], json!("0x0"), "{status}");
    Started {
        pid,
        control_socket,
        control,
        agent,
    }
}

fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while process_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "{what}: daemon {pid} still running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Bo {
    handle: u64,
    res_id: u64,
    hash: String,
}

fn req(s: &mut Started, serial: &std::path::Path, r: Value) -> Value {
    s.agent
        .request(r)
        .unwrap_or_else(|e| panic!("{e}\nserial log:\n{}", tail(serial, 40)))
}

#[test]
fn libvirt_spawns_the_daemon_and_the_guest_runs_on_it() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    libvirt::up().expect("libvirt");
    let images = Images::get();
    let dir = RunDir::new("libvirt");
    let installed = Installed::new(&images, &dir).expect("install the daemon for libvirt");
    let serial = dir.path("serial.log");
    let spec = DomainSpec {
        name: DOMAIN,
        memory_mib: 512,
        emulator: &emulator(),
        kernel: &images.kernel,
        initrd: &images.initrd,
        cmdline: "console=ttyS0 panic=-1 gpuswap.cmd=agent",
        serial_log: &serial,
        agent_socket: &dir.path("agent.sock"),
    };
    let xml = spec.xml().expect("domain XML");
    let domain = Domain::define(DOMAIN, &xml, &dir.path("domain.xml")).expect("virsh define");

    // 1. A workload with evictions; the guest ends by itself.
    let mut s = start(&domain, &installed, &dir);
    let mut bos = Vec::new();
    for i in 0..4u64 {
        let v = req(
            &mut s,
            &serial,
            json!({"op": "create_2d", "width": 256, "height": 256}),
        );
        let (handle, res_id) = (v["handle"].as_u64().unwrap(), v["res_id"].as_u64().unwrap());
        let w = req(
            &mut s,
            &serial,
            json!({"op": "write", "handle": handle, "seed": SEED, "bo": i,
                   "version": 1, "pattern": "random"}),
        );
        req(
            &mut s,
            &serial,
            json!({"op": "transfer_to_host", "handle": handle}),
        );
        let hash = w["hash"].as_str().unwrap().to_string();
        let host = s
            .control
            .resource(res_id)
            .unwrap()
            .expect("resource live on our daemon");
        assert_eq!(host["host_hash"], json!(hash), "res {res_id}: {host}");
        bos.push(Bo {
            handle,
            res_id,
            hash,
        });
    }
    let scan = req(
        &mut s,
        &serial,
        json!({"op": "shrinker_scan", "mode": "evict", "pages": 1 << 20}),
    );
    let stats = req(&mut s, &serial, json!({"op": "shrinker_stats"}));
    assert!(
        stats["evictions"].as_u64().unwrap_or(0) >= 4,
        "scan {scan}, stats {stats}"
    );
    for (i, bo) in bos.iter().enumerate() {
        assert_eq!(
            s.control.resource(bo.res_id).unwrap().unwrap()["backing"],
            "detached"
        );
        let v = req(
            &mut s,
            &serial,
            json!({"op": "verify", "handle": bo.handle, "seed": SEED, "bo": i,
                   "version": 1, "pattern": "random"}),
        );
        assert_eq!(v["ok_content"], json!(true), "BO {i} lost its content: {v}");
        req(
            &mut s,
            &serial,
            json!({"op": "transfer_to_host", "handle": bo.handle}),
        );
        let host = s.control.resource(bo.res_id).unwrap().unwrap();
        assert_eq!(host["backing"], "attached", "{host}");
        assert_eq!(
            host["generation"], 2,
            "re-attached after the eviction: {host}"
        );
        assert_eq!(host["host_hash"], json!(bo.hash), "{host}");
    }
    for bo in &bos {
        req(&mut s, &serial, json!({"op": "close", "handle": bo.handle}));
    }
    let violations = s.control.violations().expect("trace");
    assert!(violations.is_empty(), "protocol violations: {violations:?}");
    let _ = s.agent.request(json!({"op": "exit", "status": 0}));
    domain
        .wait_shutoff(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\nserial log:\n{}", tail(&serial, 40)));
    assert_guest_ended_cleanly(&serial);
    wait_gone(s.pid, "after the guest ended");
    assert!(!s.control_socket.exists(), "control socket left behind");

    // 2. `virsh destroy` with a resource live.
    let _ = std::fs::remove_file(&serial);
    let mut s = start(&domain, &installed, &dir);
    let v = req(
        &mut s,
        &serial,
        json!({"op": "create_2d", "width": 64, "height": 64}),
    );
    req(
        &mut s,
        &serial,
        json!({"op": "transfer_to_host", "handle": v["handle"]}),
    );
    assert!(s
        .control
        .resource(v["res_id"].as_u64().unwrap())
        .unwrap()
        .is_some());
    domain.destroy().expect("virsh destroy");
    wait_gone(s.pid, "after virsh destroy");
    assert!(!s.control_socket.exists(), "control socket left behind");
    assert!(installed.daemons().is_empty(), "{:?}", installed.daemons());
}
