//! Guest-memory blob resources end to end: with QEMU built by
//! `qemu-scripts/build-qemu.sh` (the vhost-user-gpu blob patch) the guest
//! negotiates VIRTIO_GPU_F_RESOURCE_BLOB with the gpuswap daemon, creates
//! mappable BLOB_MEM_GUEST blobs, and the daemon's control socket shows
//! them with the right size and the guest's content in the backing; the
//! blobs go through eviction and restore and stay consistent, and one is
//! shown with SET_SCANOUT_BLOB (pinned while shown). With stock
//! QEMU 10.0 the guest never sees the feature and create_blob fails with
//! EOPNOTSUPP.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use gpuswap_harness::{root, VmConfig};
use gpuswap_tests::GuestSession;
use serde_json::{json, Value};

const SEED: u64 = 0xb10b;
const EOPNOTSUPP: i64 = 95;

/// The blob-capable QEMU: `$GPUSWAP_QEMU` (set by `cargo xtask test`), else
/// built (cached) by `qemu-scripts/build-qemu.sh`. A build failure is a
/// test failure, never a skip.
fn patched_qemu() -> PathBuf {
    if let Some(q) = std::env::var_os("GPUSWAP_QEMU") {
        return PathBuf::from(q);
    }
    let out = Command::new("bash")
        .arg(root().join("qemu-scripts/build-qemu.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run qemu-scripts/build-qemu.sh");
    assert!(out.status.success(), "build-qemu.sh failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        text.lines()
            .last()
            .expect("build-qemu.sh printed a path")
            .trim(),
    )
}

struct Guest(GuestSession);

impl Deref for Guest {
    type Target = GuestSession;
    fn deref(&self) -> &GuestSession {
        &self.0
    }
}

impl DerefMut for Guest {
    fn deref_mut(&mut self) -> &mut GuestSession {
        &mut self.0
    }
}

impl Guest {
    fn boot(name: &str, qemu: PathBuf) -> Guest {
        eprintln!("[{name}] QEMU: {}", qemu.display());
        Guest(GuestSession::boot(
            name,
            &VmConfig {
                qemu: Some(qemu),
                ..VmConfig::default()
            },
        ))
    }

    fn host(&mut self, res_id: u64) -> Value {
        self.control
            .resource(res_id)
            .expect("control query")
            .unwrap_or_else(|| panic!("resource {res_id} not live on the host"))
    }

    fn stats(&mut self) -> Value {
        self.req(json!({"op": "shrinker_stats"}))
    }

    fn finish(self) {
        self.0.finish();
    }
}

struct Blob {
    handle: u64,
    res_id: u64,
    size: u64,
    index: u64,
    version: u64,
    hash: String,
}

/// Polls the host until `check` holds for the resource (the guest's
/// commands are asynchronous to the agent's reply; a resource not live yet
/// is `null`), or panics with the last state seen.
fn wait_host(g: &mut Guest, res_id: u64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = g
            .control
            .resource(res_id)
            .expect("control query")
            .unwrap_or(Value::Null);
        if check(&res) {
            return res;
        }
        assert!(
            Instant::now() < deadline,
            "resource {res_id}: {what} never happened; last state {res}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates mappable guest-memory blobs of a few sizes (one page, five
/// pages, 1 MiB + 3 pages) and checks them on the host.
fn create_blobs(g: &mut Guest) -> Vec<Blob> {
    let hello = g.req(json!({"op": "hello"}));
    eprintln!("guest: {hello}");
    assert_eq!(
        hello["device"]["resource_blob"],
        json!(true),
        "the guest did not negotiate RESOURCE_BLOB with the patched QEMU: {hello}"
    );
    let sizes = [4096u64, 5 * 4096, (1 << 20) + 3 * 4096];
    let mut blobs = Vec::new();
    for (index, &size) in sizes.iter().enumerate() {
        let v = g.req(json!({"op": "create_blob", "size": size}));
        assert_eq!(v["content_size"], json!(size), "{v}");
        let blob = Blob {
            handle: v["handle"].as_u64().expect("handle"),
            res_id: v["res_id"].as_u64().expect("res_id"),
            size,
            index: index as u64,
            version: 0,
            hash: String::new(),
        };
        // RESOURCE_CREATE_BLOB is not fenced: the agent's reply can come
        // before the daemon has the resource.
        let res = wait_host(g, blob.res_id, "creation", |r| !r.is_null());
        eprintln!("created blob {}: {res}", blob.res_id);
        assert_eq!(res["kind"], "blob", "{res}");
        assert_eq!(res["size"], json!(size), "{res}");
        blobs.push(blob);
    }
    blobs
}

fn write_blob(g: &mut Guest, b: &mut Blob, version: u64) {
    let v = g.req(json!({"op": "write", "handle": b.handle, "seed": SEED,
        "bo": b.index, "version": version}));
    b.version = version;
    b.hash = v["hash"].as_str().expect("hash").to_string();
}

fn verify_blob(g: &mut Guest, b: &Blob) {
    let v = g.req(json!({"op": "verify", "handle": b.handle, "seed": SEED,
        "bo": b.index, "version": b.version}));
    assert_eq!(
        v["ok_content"],
        json!(true),
        "blob {} lost content: {v}",
        b.res_id
    );
}

/// Mappable BLOB_MEM_GUEST blobs with the patched QEMU: the host sees them
/// with the right size; they are created with zero entries (attach on first
/// use, guest-kernel-patches 0005); written through the mmap, evicted by a
/// forced scan and faulted back, their content stays intact, and the host
/// never sees a detach of an unattached blob or any violation.
#[test]
fn mappable_blobs_are_created_and_survive_eviction() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("blob", patched_qemu());
    let mut blobs = create_blobs(&mut g);
    for b in blobs.iter_mut() {
        assert_eq!(g.host(b.res_id)["backing"], "detached");
        write_blob(&mut g, b, 1);
    }
    for round in 0..2u64 {
        let before = g.stats();
        let scan = g.req(json!({"op": "shrinker_scan", "mode": "evict", "pages": 1 << 20}));
        let after = g.stats();
        eprintln!("round {round}: scan {scan}, stats {after}");
        let evicted =
            after["evictions"].as_u64().unwrap_or(0) - before["evictions"].as_u64().unwrap_or(0);
        assert!(
            evicted >= blobs.len() as u64,
            "not every blob evicted: {scan} {after}"
        );
        for b in blobs.iter_mut() {
            verify_blob(&mut g, b);
            if (b.index + round) % 2 == 0 {
                write_blob(&mut g, b, round + 2);
            }
            let res = g.host(b.res_id);
            assert_eq!(res["size"], json!(b.size), "{res}");
        }
    }
    for b in &blobs {
        g.req(json!({"op": "close", "handle": b.handle}));
    }
    g.finish();
}

/// A mappable guest blob has no transfer command: the host reads its pages
/// in place. So the first mmap fault attaches it, and after an eviction the
/// fault that brings its pages back attaches them again (a new generation):
/// the host sees the guest's content both times.
#[test]
fn mappable_blob_content_reaches_the_host() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("blob-host", patched_qemu());
    let mut blobs = create_blobs(&mut g);
    let mut generation = Vec::new();
    for b in blobs.iter_mut() {
        write_blob(&mut g, b, 1);
        let hash = b.hash.clone();
        let res = wait_host(&mut g, b.res_id, "attach with the guest's content", |r| {
            r["backing"] == "attached" && r["backing_hash"] == json!(hash)
        });
        generation.push(res["generation"].as_u64().expect("generation"));
    }
    g.req(json!({"op": "shrinker_scan", "mode": "evict", "pages": 1 << 20}));
    for (b, prev) in blobs.iter().zip(generation) {
        wait_host(&mut g, b.res_id, "detach on eviction", |r| {
            r["backing"] == "detached"
        });
        verify_blob(&mut g, b);
        let hash = b.hash.clone();
        wait_host(&mut g, b.res_id, "re-attach after restore", |r| {
            r["backing"] == "attached"
                && r["generation"].as_u64().unwrap_or(0) > prev
                && r["backing_hash"] == json!(hash)
        });
    }
    for b in &blobs {
        g.req(json!({"op": "close", "handle": b.handle}));
    }
    g.finish();
}

/// A mappable guest blob created with RESOURCE_CREATE_BLOB, written through
/// its mapping and shown with ADDFB2 + SETCRTC: the guest sends
/// SET_SCANOUT_BLOB, the host shows it, attached, with the guest's content.
/// On scanout it is pinned (a forced scan leaves it alone); off scanout it
/// is evicted, and a read through the mapping brings it back, attached again
/// with the same content.
#[test]
fn created_blob_is_shown_with_set_scanout_blob_and_pinned_there() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("blob-scanout", patched_qemu());
    let (width, height) = (1024u64, 768u64);
    let size = width * height * 4;
    let v = g.req(json!({"op": "create_blob", "size": size}));
    let mut b = Blob {
        handle: v["handle"].as_u64().expect("handle"),
        res_id: v["res_id"].as_u64().expect("res_id"),
        size,
        index: 7,
        version: 0,
        hash: String::new(),
    };
    write_blob(&mut g, &mut b, 1);
    let shown = g.req(json!({"op": "scanout", "handle": b.handle,
        "width": width, "height": height}));
    eprintln!("scanout: {shown}");
    let hash = b.hash.clone();
    let res = wait_host(&mut g, b.res_id, "shown with the guest's content", |r| {
        r["backing"] == "attached"
            && r["scanouts"] == json!([0])
            && r["backing_hash"] == json!(hash)
    });
    let generation = res["generation"].as_u64().expect("generation");
    let trace = g.control.trace(0, Some(b.res_id)).expect("trace");
    assert!(
        trace
            .iter()
            .any(|e| e["event"] == "scanout" && e["enabled"] == json!(true)),
        "no scanout event for resource {}: {trace:?}",
        b.res_id
    );

    // Pinned while shown.
    g.req(json!({"op": "shrinker_scan", "mode": "evict", "pages": 1 << 20}));
    let res = g.host(b.res_id);
    assert_eq!(
        res["backing"], "attached",
        "a scanout blob was evicted: {res}"
    );
    assert_eq!(res["generation"], json!(generation), "{res}");

    // Off the scanout it is an ordinary evictable blob.
    g.req(json!({"op": "scanout_off"}));
    g.req(json!({"op": "shrinker_scan", "mode": "evict", "pages": 1 << 20}));
    wait_host(&mut g, b.res_id, "detach on eviction", |r| {
        r["backing"] == "detached"
    });
    verify_blob(&mut g, &b);
    wait_host(&mut g, b.res_id, "re-attach after restore", |r| {
        r["backing"] == "attached"
            && r["generation"].as_u64().unwrap_or(0) > generation
            && r["backing_hash"] == json!(hash)
    });
    g.req(json!({"op": "close", "handle": b.handle}));
    g.finish();
}

#[test]
fn stock_qemu_hides_blob_and_create_blob_fails() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("blob-stock", PathBuf::from("/usr/bin/qemu-system-x86_64"));
    let hello = g.req(json!({"op": "hello"}));
    eprintln!("guest: {hello}");
    assert_eq!(hello["device"]["resource_blob"], json!(false), "{hello}");
    assert_eq!(
        g.req_errno(json!({"op": "create_blob", "size": 4096})),
        Some(EOPNOTSUPP)
    );
    g.finish();
}

/// On a device with RESOURCE_BLOB and without virgl, Linux makes dumb BOs
/// guest-memory blobs (`virtio_gpu_mode_dumb_create`), shown with
/// SET_SCANOUT_BLOB. Their first use (the plane's `prepare_fb`) attaches
/// them; off scanout they are evictable, and the next scanout restores them.
#[test]
fn dumb_blobs_attach_on_scanout_and_survive_eviction() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("blob-dumb", patched_qemu());
    let (width, height) = (640u64, 480u64);
    let v = g.req(json!({"op": "create_dumb", "width": width, "height": height}));
    let handle = v["handle"].as_u64().expect("handle");
    let res_id = v["res_id"].as_u64().expect("res_id");
    let size = v["content_size"].as_u64().expect("content_size");
    assert_eq!(size, width * height * 4, "{v}");
    let res = g.host(res_id);
    eprintln!("dumb BO created: {v} host {res}");
    assert_eq!(res["kind"], "blob", "{res}");
    assert_eq!(res["size"], json!(size), "{res}");
    assert_eq!(
        res["backing"], "detached",
        "attached before first use: {res}"
    );

    let mut version = 1;
    let w =
        g.req(json!({"op": "write", "handle": handle, "seed": SEED, "bo": 9, "version": version}));
    let mut hash = w["hash"].as_str().expect("hash").to_string();
    let mut generation = 0;
    for round in 0..3u64 {
        g.req(json!({"op": "scanout", "handle": handle}));
        let want = hash.clone();
        let res = wait_host(&mut g, res_id, "attach on scanout", |r| {
            r["backing"] == "attached" && r["backing_hash"] == json!(want)
        });
        eprintln!("round {round}: on scanout {res}");
        assert_eq!(res["scanouts"], json!([0]), "{res}");
        let gen = res["generation"].as_u64().expect("generation");
        assert!(gen > generation, "generation did not rise: {res}");
        generation = gen;

        g.req(json!({"op": "scanout_off"}));
        let before = g.stats();
        let scan = g.req(json!({"op": "shrinker_scan", "mode": "evict", "pages": 1 << 20}));
        let after = g.stats();
        eprintln!("round {round}: scan {scan} stats {after}");
        assert!(
            after["evictions"].as_u64() > before["evictions"].as_u64(),
            "{after}"
        );
        let res = wait_host(&mut g, res_id, "detach on eviction", |r| {
            r["backing"] == "detached"
        });
        assert_eq!(res["size"], json!(size));
        let v = g.req(
            json!({"op": "verify", "handle": handle, "seed": SEED, "bo": 9,
            "version": version}),
        );
        assert_eq!(v["ok_content"], json!(true), "lost content: {v}");
        if round % 2 == 0 {
            version += 1;
            let w = g.req(
                json!({"op": "write", "handle": handle, "seed": SEED, "bo": 9,
                "version": version}),
            );
            hash = w["hash"].as_str().expect("hash").to_string();
        }
    }
    g.req(json!({"op": "close", "handle": handle}));
    g.finish();
}
