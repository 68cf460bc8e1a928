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
use std::time::Duration;

use gpuswap_api::agent::{self, ScanMode, ShrinkerCounters};
use gpuswap_api::control::{Backing, EventKind, Fault, Resource, ResourceKind};
use gpuswap_harness::{poll_every, root, VmConfig};
use gpuswap_tests::GuestSession;

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

    fn host(&mut self, res_id: u32) -> Resource {
        self.control
            .resource(res_id)
            .expect("control query")
            .unwrap_or_else(|| panic!("resource {res_id} not live on the host"))
    }

    fn stats(&mut self) -> ShrinkerCounters {
        self.req(agent::ShrinkerStats {})
    }

    /// A forced scan that evicts whatever it can.
    fn evict_all(&mut self) -> agent::Scanned {
        self.req(agent::ShrinkerScan {
            pages: 1 << 20,
            mode: Some(ScanMode::Evict),
        })
    }

    fn finish(self) {
        self.0.finish();
    }
}

struct Blob {
    handle: u32,
    res_id: u32,
    size: u64,
    index: u64,
    version: u64,
    hash: String,
}

/// Polls the host until the resource is live and `check` holds for it (the
/// guest's commands are asynchronous to the agent's reply), or panics with
/// the last state seen.
fn wait_host(
    g: &mut Guest,
    res_id: u32,
    what: &str,
    check: impl Fn(&Resource) -> bool,
) -> Resource {
    let mut last = None;
    let found = poll_every(Duration::from_millis(50), Duration::from_secs(20), || {
        last = g.control.resource(res_id).expect("control query");
        last.clone().filter(&check)
    });
    found.unwrap_or_else(|| panic!("resource {res_id}: {what} never happened; last state {last:?}"))
}

/// Creates mappable guest-memory blobs of a few sizes (one page, five
/// pages, 1 MiB + 3 pages) and checks them on the host.
fn create_blobs(g: &mut Guest) -> Vec<Blob> {
    let hello = g.req(agent::Hello {});
    eprintln!("guest: {hello:?}");
    assert_eq!(
        hello.device.and_then(|d| d.resource_blob),
        Some(true),
        "the guest did not negotiate RESOURCE_BLOB with the patched QEMU: {hello:?}"
    );
    let sizes = [4096u64, 5 * 4096, (1 << 20) + 3 * 4096];
    let mut blobs = Vec::new();
    for (index, &size) in sizes.iter().enumerate() {
        let v = g.req(agent::CreateBlob {
            size,
            blob_flags: None,
        });
        assert_eq!(v.content_size, size, "{v:?}");
        let blob = Blob {
            handle: v.handle,
            res_id: v.res_id,
            size,
            index: index as u64,
            version: 0,
            hash: String::new(),
        };
        // RESOURCE_CREATE_BLOB is not fenced: the agent's reply can come
        // before the daemon has the resource.
        let res = wait_host(g, blob.res_id, "creation", |_| true);
        eprintln!("created blob {}: {res:?}", blob.res_id);
        assert_eq!(res.kind, ResourceKind::Blob, "{res:?}");
        assert_eq!(res.size, size, "{res:?}");
        blobs.push(blob);
    }
    blobs
}

fn write(handle: u32, bo: u64, version: u64) -> agent::Write {
    agent::Write {
        handle,
        seed: SEED,
        bo,
        version,
        pattern: None,
    }
}

fn verify(handle: u32, bo: u64, version: u64) -> agent::Verify {
    agent::Verify {
        handle,
        seed: SEED,
        bo,
        version,
        pattern: None,
    }
}

fn write_blob(g: &mut Guest, b: &mut Blob, version: u64) {
    b.version = version;
    b.hash = g.req(write(b.handle, b.index, version)).hash;
}

fn verify_blob(g: &mut Guest, b: &Blob) {
    let v = g.req(verify(b.handle, b.index, b.version));
    assert!(v.ok_content, "blob {} lost content: {v:?}", b.res_id);
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
        assert_eq!(g.host(b.res_id).backing, Backing::Detached);
        write_blob(&mut g, b, 1);
    }
    for round in 0..2u64 {
        let before = g.stats();
        let scan = g.evict_all();
        let after = g.stats();
        eprintln!("round {round}: scan {scan:?}, stats {after:?}");
        let evicted = after.evictions - before.evictions;
        assert!(
            evicted >= blobs.len() as u64,
            "not every blob evicted: {scan:?} {after:?}"
        );
        for b in blobs.iter_mut() {
            verify_blob(&mut g, b);
            if (b.index + round) % 2 == 0 {
                write_blob(&mut g, b, round + 2);
            }
            let res = g.host(b.res_id);
            assert_eq!(res.size, b.size, "{res:?}");
        }
    }
    for b in &blobs {
        g.req(agent::Close { handle: b.handle });
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
        let hash = Some(b.hash.clone());
        let res = wait_host(&mut g, b.res_id, "attach with the guest's content", |r| {
            r.is_attached() && r.backing_hash == hash
        });
        generation.push(res.generation);
    }
    g.evict_all();
    for (b, prev) in blobs.iter().zip(generation) {
        wait_host(&mut g, b.res_id, "detach on eviction", |r| !r.is_attached());
        verify_blob(&mut g, b);
        let hash = Some(b.hash.clone());
        wait_host(&mut g, b.res_id, "re-attach after restore", |r| {
            r.is_attached() && r.generation > prev && r.backing_hash == hash
        });
    }
    for b in &blobs {
        g.req(agent::Close { handle: b.handle });
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
    let (width, height) = (1024u32, 768u32);
    let size = u64::from(width * height * 4);
    let v = g.req(agent::CreateBlob {
        size,
        blob_flags: None,
    });
    let mut b = Blob {
        handle: v.handle,
        res_id: v.res_id,
        size,
        index: 7,
        version: 0,
        hash: String::new(),
    };
    write_blob(&mut g, &mut b, 1);
    let shown = g.req(agent::Scanout {
        handle: b.handle,
        width: Some(width),
        height: Some(height),
        stride: None,
    });
    eprintln!("scanout: {shown:?}");
    let hash = Some(b.hash.clone());
    let res = wait_host(&mut g, b.res_id, "shown with the guest's content", |r| {
        r.is_attached() && r.scanouts == [0] && r.backing_hash == hash
    });
    let generation = res.generation;
    let trace = g.control.trace(0, Some(b.res_id)).expect("trace");
    assert!(
        trace
            .iter()
            .any(|e| matches!(e.kind, EventKind::Scanout { enabled: true, .. })),
        "no scanout event for resource {}: {trace:?}",
        b.res_id
    );

    // Pinned while shown.
    g.evict_all();
    let res = g.host(b.res_id);
    assert!(res.is_attached(), "a scanout blob was evicted: {res:?}");
    assert_eq!(res.generation, generation, "{res:?}");

    // Off the scanout it is an ordinary evictable blob.
    g.req(agent::ScanoutOff {});
    g.evict_all();
    wait_host(&mut g, b.res_id, "detach on eviction", |r| !r.is_attached());
    verify_blob(&mut g, &b);
    wait_host(&mut g, b.res_id, "re-attach after restore", |r| {
        r.is_attached() && r.generation > generation && r.backing_hash == hash
    });
    g.req(agent::Close { handle: b.handle });
    g.finish();
}

#[test]
fn stock_qemu_hides_blob_and_create_blob_fails() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("blob-stock", PathBuf::from("/usr/bin/qemu-system-x86_64"));
    let hello = g.req(agent::Hello {});
    eprintln!("guest: {hello:?}");
    assert_eq!(
        hello.device.and_then(|d| d.resource_blob),
        Some(false),
        "{hello:?}"
    );
    assert_eq!(
        g.req_errno(agent::CreateBlob {
            size: 4096,
            blob_flags: None
        }),
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
    let (width, height) = (640u32, 480u32);
    let v = g.req(agent::CreateDumb { width, height });
    let (handle, res_id, size) = (v.handle, v.res_id, v.content_size);
    assert_eq!(size, u64::from(width * height * 4), "{v:?}");
    let res = g.host(res_id);
    eprintln!("dumb BO created: {v:?} host {res:?}");
    assert_eq!(res.kind, ResourceKind::Blob, "{res:?}");
    assert_eq!(res.size, size, "{res:?}");
    assert_eq!(
        res.backing,
        Backing::Detached,
        "attached before first use: {res:?}"
    );

    let mut version = 1;
    let mut hash = g.req(write(handle, 9, version)).hash;
    let mut generation = 0;
    for round in 0..3u64 {
        g.req(agent::Scanout {
            handle,
            ..Default::default()
        });
        let want = Some(hash.clone());
        let res = wait_host(&mut g, res_id, "attach on scanout", |r| {
            r.is_attached() && r.backing_hash == want
        });
        eprintln!("round {round}: on scanout {res:?}");
        assert_eq!(res.scanouts, [0], "{res:?}");
        assert!(
            res.generation > generation,
            "generation did not rise: {res:?}"
        );
        generation = res.generation;

        g.req(agent::ScanoutOff {});
        let before = g.stats();
        let scan = g.evict_all();
        let after = g.stats();
        eprintln!("round {round}: scan {scan:?} stats {after:?}");
        assert!(after.evictions > before.evictions, "{after:?}");
        let res = wait_host(&mut g, res_id, "detach on eviction", |r| !r.is_attached());
        assert_eq!(res.size, size);
        let v = g.req(verify(handle, 9, version));
        assert!(v.ok_content, "lost content: {v:?}");
        if round % 2 == 0 {
            version += 1;
            hash = g.req(write(handle, 9, version)).hash;
        }
    }
    g.req(agent::Close { handle });
    g.finish();
}

/// The host refuses one ATTACH_BACKING (the daemon's fault injection, as a
/// host out of memory would): the guest's use that needed it fails with EIO
/// and nothing else does. A 2D buffer's transfer fails once, the buffer
/// keeps its content and the next transfer attaches it; a blob's mmap fault
/// maps the pages anyway (the CPU does not need the host), and the next
/// restore attaches it. Both sides count each refusal once, the host never
/// sees a DETACH for a backing it refused, and the guest log stays clean.
#[test]
fn a_refused_attach_fails_that_use_alone_and_the_next_use_attaches() {
    const EIO: i64 = 5;
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let config = VmConfig {
        qemu: Some(patched_qemu()),
        ..VmConfig::default()
    };
    let session =
        GuestSession::boot_with_daemon("refused-attach", &config, &["--allow-fault-injection"]);
    let mut g = Guest(session);
    let refuse_next_attach = |g: &mut Guest| {
        let armed = g
            .control
            .fault(Fault {
                fail_attaches: Some(1),
                ..Fault::default()
            })
            .expect("arm a refused attach");
        assert_eq!(armed.fail_attaches, 1);
    };

    // A 2D buffer, written, transferred (attached), evicted.
    let v = g.req(agent::Create2d {
        width: 256,
        height: 256,
        format: None,
    });
    let (handle, res_id) = (v.handle, v.res_id);
    let hash = g.req(write(handle, 7, 1)).hash;
    let transfer = agent::TransferToHost {
        handle,
        ..agent::TransferToHost::default()
    };
    assert_eq!(g.req_errno(transfer.clone()), None);
    g.evict_all();
    assert_eq!(g.host(res_id).backing, Backing::Detached);

    refuse_next_attach(&mut g);
    assert_eq!(
        g.req_errno(transfer.clone()),
        Some(EIO),
        "the refused attach's use"
    );
    assert_eq!(g.host(res_id).backing, Backing::Detached);
    assert_eq!(g.stats().attach_failures, 1);
    let v = g.req(verify(handle, 7, 1));
    assert!(v.ok_content, "lost content after a refused attach: {v:?}");
    assert_eq!(g.req_errno(transfer.clone()), None, "the next use");
    let res = g.host(res_id);
    assert_eq!(res.backing, Backing::Attached);
    assert_eq!(res.backing_hash.as_ref(), Some(&hash), "{res:?}");
    assert_eq!(res.host_hash.as_ref(), Some(&hash), "{res:?}");

    // A one-page blob (one fault): its fault attaches it; refused, the
    // fault still maps it. (Each fault of an unattached blob attaches.)
    let mut blobs = create_blobs(&mut g);
    let blob = &mut blobs[0];
    assert_eq!(blob.size, 4096);
    write_blob(&mut g, blob, 1);
    g.evict_all();
    assert_eq!(g.host(blob.res_id).backing, Backing::Detached);
    refuse_next_attach(&mut g);
    verify_blob(&mut g, blob);
    assert_eq!(g.host(blob.res_id).backing, Backing::Detached);
    assert_eq!(g.stats().attach_failures, 2);
    // Unattached pages go without a DETACH; the next fault attaches them.
    g.evict_all();
    verify_blob(&mut g, blob);
    let res = g.host(blob.res_id);
    assert_eq!(res.backing, Backing::Attached, "{res:?}");
    assert_eq!(res.backing_hash.as_ref(), Some(&blob.hash), "{res:?}");

    let counters = g.control.counters().expect("counters").counters;
    assert_eq!(counters.faults_injected, 2);
    assert_eq!(counters.errors.get("resource_attach_backing"), Some(&2));
    assert_eq!(g.stats().attach_failures, 2);
    let blob_res_id = blob.res_id;
    for id in [res_id, blob_res_id] {
        let refused = g.control.trace(0, Some(id)).expect("trace");
        let faults = refused
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Fault { .. }))
            .count();
        assert_eq!(faults, 1, "resource {id}: {refused:?}");
    }
    g.req(agent::Close { handle });
    for b in &blobs {
        g.req(agent::Close { handle: b.handle });
    }
    g.finish();
}
