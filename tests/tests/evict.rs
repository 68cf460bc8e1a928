//! Eviction, restore and purge of virtio-gpu buffers in a real guest (the
//! patched debug kernel, with lockdep) against the gpuswap daemon: content
//! survives every cycle from the guest's and the host's view, the counters
//! prove that evictions, restores and purges happened, the daemon's trace
//! shows detach/attach with rising generations and no violation, and the
//! guest kernel log stays clean.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use gpuswap_api::agent::{
    self, HogReport, Madv, Pattern, RunOutput, ScanMode, Scanned, ShrinkerCounters,
};
use gpuswap_api::control::{Backing, DetachReason, Event, EventKind, Resource};
use gpuswap_harness::{kernel_problems, tail, Images, VmConfig};
use gpuswap_tests::GuestSession;
use serde_json::{json, Value};

const SEED: u64 = 0x5eed;

/// A booted guest with its daemon, and the eviction tests' helpers.
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
    fn boot(name: &str, memory_mib: u32, append: &str) -> Guest {
        Guest(GuestSession::boot(
            name,
            &VmConfig {
                memory_mib,
                append: format!("gpuswap.cmd=agent {append}"),
                ..VmConfig::default()
            },
        ))
    }

    fn stats(&mut self) -> ShrinkerCounters {
        self.req(agent::ShrinkerStats {})
    }

    fn scan(&mut self, mode: ScanMode, pages: u64) -> Scanned {
        self.req(agent::ShrinkerScan {
            pages,
            mode: Some(mode),
        })
    }

    fn create_2d(&mut self, width: u32, height: u32) -> Bo {
        let v = self.req(agent::Create2d {
            width,
            height,
            format: None,
        });
        Bo {
            handle: v.handle,
            res_id: v.res_id,
            version: 0,
            hash: String::new(),
        }
    }

    /// Writes version `version` of `bo`'s pattern through the mmap.
    fn write(&mut self, bo: &mut Bo, index: u64, version: u64, pattern: Pattern) {
        let v = self.req(agent::Write {
            handle: bo.handle,
            seed: SEED,
            bo: index,
            version,
            pattern: Some(pattern),
        });
        bo.version = version;
        bo.hash = v.hash;
    }

    fn transfer(&mut self, bo: &Bo) {
        self.req(agent::TransferToHost {
            handle: bo.handle,
            ..agent::TransferToHost::default()
        });
    }

    /// The guest's mapping holds exactly version `bo.version`.
    fn verify(&mut self, bo: &Bo, index: u64, pattern: Pattern) {
        let v = self.req(agent::Verify {
            handle: bo.handle,
            seed: SEED,
            bo: index,
            version: bo.version,
            pattern: Some(pattern),
        });
        assert!(
            v.ok_content,
            "BO {index} (res {}) lost its content: {v:?}",
            bo.res_id
        );
    }

    fn host(&mut self, bo: &Bo) -> Resource {
        self.control
            .resource(bo.res_id)
            .expect("control query")
            .unwrap_or_else(|| panic!("resource {} not live on the host", bo.res_id))
    }

    /// The host's copy of `bo` is what the guest last transferred.
    fn assert_host_copy(&mut self, bo: &Bo) {
        let res = self.host(bo);
        assert_eq!(
            res.host_hash.as_ref(),
            Some(&bo.hash),
            "host copy of resource {} differs from the guest's: {res:?}",
            bo.res_id
        );
    }

    fn trace(&mut self, resource: u32) -> Vec<Event> {
        self.control.trace(0, Some(resource)).expect("trace")
    }

    fn close(&mut self, bo: &Bo) {
        self.req(agent::Close { handle: bo.handle });
    }

    /// Runs `argv` in the guest.
    fn run(&mut self, argv: &[&str]) -> RunOutput {
        self.req(agent::Run {
            argv: argv.iter().map(|a| a.to_string()).collect(),
        })
    }

    fn madvise(&mut self, bo: &Bo, madv: Madv) -> bool {
        self.req(agent::Madvise {
            handle: bo.handle,
            madv,
        })
        .retained
    }

    fn finish(self) {
        self.0.finish();
    }
}

#[derive(Debug, Clone)]
struct Bo {
    handle: u32,
    res_id: u32,
    version: u64,
    hash: String,
}

/// Attach generations of a resource's attach events, in trace order, and
/// the number of detaches by command.
fn attaches_and_detaches(trace: &[Event]) -> (Vec<u64>, usize) {
    let gens = trace
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Attach { .. }))
        .map(|e| e.generation)
        .collect();
    let detaches = trace
        .iter()
        .filter(|e| {
            e.kind
                == EventKind::Detach {
                    reason: DetachReason::Command,
                }
        })
        .count();
    (gens, detaches)
}

/// Forced scans (debugfs) evict every idle BO; reading through the mmap
/// brings the pages back, a transfer attaches them again, and from every
/// side the content is what was last written.
#[test]
fn forced_eviction_and_restore_keep_content() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("evict-forced", 512, "");
    let before = g.stats();

    // Created but never used: no pages, nothing attached (attach on first use).
    let mut bos: Vec<Bo> = (0..6).map(|i| g.create_2d(256 + 64 * i, 128)).collect();
    for bo in &bos {
        let res = g.host(bo);
        assert_eq!(
            res.backing,
            Backing::Detached,
            "attached before first use: {res:?}"
        );
    }
    for (i, bo) in bos.iter_mut().enumerate() {
        g.write(bo, i as u64, 1, Pattern::Random);
    }
    for bo in &bos {
        g.transfer(bo);
        g.assert_host_copy(bo);
        assert_eq!(g.host(bo).backing, Backing::Attached);
    }

    for round in 0..3u64 {
        let scan = g.scan(ScanMode::Evict, 1 << 20);
        let stats = g.stats();
        eprintln!("round {round}: scan {scan:?} stats {stats:?}");
        assert!(scan.freed > 0, "nothing evicted: {scan:?}");
        for bo in &bos {
            let res = g.host(bo);
            assert_eq!(res.backing, Backing::Detached, "not evicted: {res:?}");
            // The host copy survives the detach.
            assert_eq!(res.host_hash.as_ref(), Some(&bo.hash));
        }
        // Fault the pages back in: content intact, host not attached yet.
        for (i, bo) in bos.iter().enumerate() {
            g.verify(bo, i as u64, Pattern::Random);
            assert_eq!(
                g.host(bo).backing,
                Backing::Detached,
                "fault must not attach"
            );
        }
        // A new version, transferred: re-attached, host copy updated.
        for (i, bo) in bos.iter_mut().enumerate() {
            if i % 2 == 0 {
                g.write(bo, i as u64, round + 2, Pattern::Random);
            }
            g.transfer(bo);
            g.assert_host_copy(bo);
            let res = g.host(bo);
            assert_eq!(res.backing, Backing::Attached);
            assert_eq!(res.backing_hash.as_ref(), Some(&bo.hash), "{res:?}");
        }
    }
    // Evict once more and restore through a transfer alone (no fault first).
    g.scan(ScanMode::Evict, 1 << 20);
    for bo in &bos {
        g.transfer(bo);
        g.assert_host_copy(bo);
    }

    let after = g.stats();
    assert!(
        after.evictions - before.evictions >= 4 * bos.len() as u64,
        "{after:?}"
    );
    assert!(
        after.restores - before.restores >= 4 * bos.len() as u64,
        "{after:?}"
    );

    for bo in &bos {
        let (gens, detaches) = attaches_and_detaches(&g.trace(bo.res_id));
        assert_eq!(gens, (1..=5).collect::<Vec<u64>>(), "res {}", bo.res_id);
        assert_eq!(detaches, 4, "res {}", bo.res_id);
    }
    for bo in &bos {
        g.close(bo);
    }
    g.finish();
}

/// Events the daemon recorded for a resource after sequence number `after`.
fn events_after(g: &mut Guest, resource: u32, after: u64) -> Vec<Event> {
    g.control.trace(after, Some(resource)).expect("trace")
}

fn last_seq(g: &mut Guest) -> u64 {
    g.control.counters().expect("counters").last_seq
}

/// Waits until the host no longer has `res_id`.
fn wait_unref(g: &mut Guest, res_id: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while g.control.resource(res_id).expect("query").is_some() {
        assert!(Instant::now() < deadline, "resource {res_id} still live");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// madvise(DONTNEED) lets the shrinker purge: DETACH + UNREF on the host,
/// retained = false, -EINVAL on transfer, SIGBUS on a CPU access, nothing
/// sent on close. WILLNEED in time keeps the content; pinned (scanout) BOs
/// and WILLNEED BOs are never purged.
#[test]
fn madvise_dontneed_purges() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("evict-purge", 512, "");
    const EINVAL: i64 = 22;
    const SIGBUS: i32 = 7;

    let mut keep = g.create_2d(256, 256); // WILLNEED throughout
    let mut undo = g.create_2d(256, 256); // DONTNEED, then WILLNEED before a scan
    let mut gone = g.create_2d(256, 256); // DONTNEED, purged resident
    let mut cold = g.create_2d(256, 256); // evicted first, then purged
    let mut shown = g.create_2d(640, 480); // DONTNEED but on scanout
    let all = [&mut keep, &mut undo, &mut gone, &mut cold, &mut shown];
    for (i, bo) in all.into_iter().enumerate() {
        g.write(bo, i as u64, 1, Pattern::Random);
        g.transfer(bo);
        g.assert_host_copy(bo);
    }
    g.req(agent::Scanout {
        handle: shown.handle,
        ..agent::Scanout::default()
    });
    g.scan(ScanMode::Evict, 1 << 20);
    assert_eq!(g.host(&cold).backing, Backing::Detached);
    // `cold` stays evicted; the others are faulted back in and attached.
    for (i, bo) in [(0, &keep), (1, &undo), (2, &gone), (4, &shown)] {
        g.verify(bo, i, Pattern::Random);
        g.transfer(bo);
        assert_eq!(g.host(bo).backing, Backing::Attached);
    }

    for bo in [&undo, &gone, &cold, &shown] {
        assert!(g.madvise(bo, Madv::Dontneed));
    }
    assert!(g.madvise(&undo, Madv::Willneed));
    let stats = g.stats();
    assert!(stats.purgeable_pages >= 2 * 64, "{stats:?}");

    let before = g.stats();
    let seq = last_seq(&mut g);
    let scan = g.scan(ScanMode::Purge, 1 << 20);
    let after = g.stats();
    eprintln!("purge scan {scan:?}: {after:?}");
    assert_eq!(after.purges - before.purges, 2, "{after:?}");

    // Purged: retained false, host resource gone (detach then unref).
    for bo in [&gone, &cold] {
        assert!(
            !g.madvise(bo, Madv::Willneed),
            "res {} not purged",
            bo.res_id
        );
        wait_unref(&mut g, bo.res_id);
    }
    let ev: Vec<EventKind> = events_after(&mut g, gone.res_id, seq)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        ev,
        [
            EventKind::Detach {
                reason: DetachReason::Command
            },
            EventKind::Unref
        ],
        "resident purge"
    );
    let ev: Vec<EventKind> = events_after(&mut g, cold.res_id, seq)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        ev,
        [EventKind::Unref],
        "an evicted BO is purged without a second detach"
    );

    // Later use fails as documented.
    assert_eq!(
        g.req_errno(agent::TransferToHost {
            handle: gone.handle,
            barrier: Some(false),
            ..agent::TransferToHost::default()
        }),
        Some(EINVAL)
    );
    let v = g.req(agent::Touch {
        handle: gone.handle,
        offset: None,
    });
    assert_eq!(v.signal, Some(SIGBUS), "CPU access to a purged BO");
    let v = g.req(agent::Touch {
        handle: cold.handle,
        offset: Some(4096),
    });
    assert_eq!(v.signal, Some(SIGBUS));

    // Not purged: WILLNEED ones and the pinned scanout; all intact.
    for (i, bo) in [(0, &keep), (1, &undo), (4, &shown)] {
        assert!(g.madvise(bo, Madv::Willneed));
        g.verify(bo, i, Pattern::Random);
        g.transfer(bo);
        g.assert_host_copy(bo);
    }
    assert_eq!(g.host(&shown).backing, Backing::Attached);

    // Closing purged BOs sends nothing more for them.
    let seq = last_seq(&mut g);
    g.close(&gone);
    g.close(&cold);
    g.req(agent::ScanoutOff {});
    for bo in [&keep, &undo, &shown] {
        g.close(bo);
        wait_unref(&mut g, bo.res_id);
    }
    for bo in [&gone, &cold] {
        let ev = events_after(&mut g, bo.res_id, seq);
        assert!(
            ev.is_empty(),
            "events after closing purged res {}: {ev:?}",
            bo.res_id
        );
    }
    let stats = g.stats();
    assert_eq!(stats.purgeable_pages, 0, "{stats:?}");
    g.finish();
}

/// MemTotal of the guest, in bytes.
fn guest_ram(g: &mut Guest) -> u64 {
    g.req(agent::Meminfo {}).get("MemTotal").expect("MemTotal") * 1024
}

/// Fills `count` 1024x1024 BOs (4 MiB each) with the sparse pattern, each
/// transferred and checked on the host right away.
fn fill_bos(g: &mut Guest, count: usize, version: u64) -> Vec<Bo> {
    let mut bos = Vec::with_capacity(count);
    for i in 0..count {
        let mut bo = g.create_2d(1024, 1024);
        g.write(&mut bo, i as u64, version, Pattern::Sparse);
        g.transfer(&bo);
        g.assert_host_copy(&bo);
        bos.push(bo);
    }
    bos
}

/// More BO memory than guest RAM, with zram swap and no forced scan: only
/// the Rust shrinker, called by the kernel's reclaim, makes room. Every BO
/// reads back intact through its mapping and through a transfer.
#[test]
fn bos_larger_than_guest_ram_survive_real_reclaim() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("evict-ram", 256, "gpuswap.zram=1G");
    let ram = guest_ram(&mut g);
    let count = (ram * 3 / 2 / (4 << 20)) as usize + 1;
    eprintln!("guest RAM {} MiB, {count} BOs of 4 MiB", ram >> 20);
    let before = g.stats();

    let mut bos = fill_bos(&mut g, count, 1);
    let mid = g.stats();
    eprintln!("after filling: {mid:?}");
    assert!(
        mid.evictions > before.evictions,
        "the shrinker evicted nothing: {mid:?}"
    );

    // Read everything back (restores), write a new version into half of
    // them and transfer all (re-attach), checking the host copy.
    for (i, bo) in bos.iter_mut().enumerate() {
        g.verify(bo, i as u64, Pattern::Sparse);
        if i % 2 == 1 {
            g.write(bo, i as u64, 2, Pattern::Sparse);
        }
        g.transfer(bo);
        g.assert_host_copy(bo);
    }
    let after = g.stats();
    let mem = g.req(agent::Meminfo {});
    eprintln!("after verifying: {after:?}\nmeminfo: {mem:?}");
    assert!(after.restores > mid.restores, "{after:?}");

    // Every resource that was evicted and restored shows rising generations.
    let mut cycled = 0;
    for bo in &bos {
        let (gens, detaches) = attaches_and_detaches(&g.trace(bo.res_id));
        let want: Vec<u64> = (1..=gens.len() as u64).collect();
        assert_eq!(gens, want, "res {}", bo.res_id);
        assert!(detaches + 1 >= gens.len(), "res {}: {gens:?}", bo.res_id);
        cycled += usize::from(detaches > 0);
    }
    assert!(cycled > 0, "no resource went through detach/attach");
    for bo in &bos {
        g.close(bo);
    }
    g.finish();
}

/// A background thread in the guest forces scans back to back while the
/// agent writes (mmap faults), transfers, verifies, closes and recreates
/// BOs, and flips a scanout: evict races every restore path and close.
/// Nothing may be lost, the host must never see a detached resource used,
/// and lockdep must stay quiet.
#[test]
fn evictions_race_faults_transfers_closes_and_scanout() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("evict-race", 512, "");
    let before = g.stats();
    let mut bos: Vec<Bo> = (0..6).map(|_| g.create_2d(512, 256)).collect();
    let mut index: Vec<u64> = (0..bos.len() as u64).collect();
    let mut shown = g.create_2d(640, 480);
    g.write(&mut shown, 1000, 1, Pattern::Random);

    g.req(agent::ScanLoopStart {
        pages: 1 << 20,
        mode: Some(ScanMode::All),
        interval_ms: None,
    });
    for round in 1..=12u64 {
        for (i, bo) in bos.iter_mut().enumerate() {
            g.write(bo, index[i], round, Pattern::Random);
            g.transfer(bo);
            g.assert_host_copy(bo);
            g.verify(bo, index[i], Pattern::Random);
        }
        // Evict vs close: drop one BO (maybe evicted right now), make another.
        let slot = (round as usize) % bos.len();
        g.close(&bos[slot]);
        bos[slot] = g.create_2d(512, 256);
        index[slot] = 100 + round;
        let (i, bo) = (index[slot], &mut bos[slot]);
        g.write(bo, i, round, Pattern::Random);
        g.transfer(bo);
        g.assert_host_copy(bo);

        // Scanout: pinned while shown, evictable again once it is off.
        g.write(&mut shown, 1000, round, Pattern::Random);
        g.req(agent::Scanout {
            handle: shown.handle,
            ..agent::Scanout::default()
        });
        g.transfer(&shown);
        g.assert_host_copy(&shown);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            g.host(&shown).backing,
            Backing::Attached,
            "scanout BO evicted"
        );
        g.verify(&shown, 1000, Pattern::Random);
        g.req(agent::ScanoutOff {});
    }
    let looped = g.req(agent::ScanLoopStop {});
    let after = g.stats();
    eprintln!("scan loop {looped:?}\nstats {after:?}");
    assert_eq!(looped.errors, 0, "{looped:?}");
    assert!(looped.scans > 10, "{looped:?}");
    assert!(after.evictions > before.evictions, "{after:?}");
    assert!(after.restores > before.restores, "{after:?}");

    for bo in bos.iter().chain([&shown]) {
        let (gens, _) = attaches_and_detaches(&g.trace(bo.res_id));
        let want: Vec<u64> = (1..=gens.len() as u64).collect();
        assert_eq!(gens, want, "res {}", bo.res_id);
        g.close(bo);
    }
    g.finish();
}

/// The shrinker module is unloaded and loaded again in a tight loop while
/// another loop makes the kernel call every shrinker (`drop_caches` = 2 runs
/// reclaim's slab shrinking) and the agent writes, transfers and reads BOs
/// back: unloading races running callbacks and leaves BOs (evicted ones
/// too) behind safely, and eviction works again after every reload. Real
/// memory pressure is left to the test above: with the module gone for a
/// moment, nothing could give BO memory back and the OOM killer would be
/// right to strike.
#[test]
fn shrinker_module_reload_under_load() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("evict-reload", 512, "");
    let reload = "n=0; while [ ! -e /tmp/stop ]; do \
        rmmod gpuswap_shrinker || exit 1; \
        insmod /lib/modules/gpuswap_shrinker.ko || exit 2; \
        n=$((n+1)); done; echo $n > /tmp/reload.done";
    let reclaim = "n=0; while [ ! -e /tmp/stop ]; do \
        echo 2 > /proc/sys/vm/drop_caches || exit 3; \
        n=$((n+1)); done; echo $n > /tmp/reclaim.done";
    for (name, script) in [("reload", reload), ("reclaim", reclaim)] {
        let started = g.run(&["sh", "-c", &format!("({script}) >/tmp/{name}.log 2>&1 &")]);
        assert_eq!(started.status, Some(0), "{started:?}");
    }
    let before = g.stats();

    let mut bos: Vec<Bo> = (0..8).map(|_| g.create_2d(1024, 512)).collect();
    for round in 1..=6u64 {
        for (i, bo) in bos.iter_mut().enumerate() {
            g.write(bo, i as u64, round, Pattern::Random);
            g.transfer(bo);
            g.assert_host_copy(bo);
        }
        std::thread::sleep(Duration::from_millis(300));
        for (i, bo) in bos.iter().enumerate() {
            g.verify(bo, i as u64, Pattern::Random);
        }
    }

    g.run(&["touch", "/tmp/stop"]);
    let mut loops = BTreeMap::new();
    for name in ["reload", "reclaim"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let n = loop {
            let v = g.run(&["cat", &format!("/tmp/{name}.done")]);
            if v.status == Some(0) {
                break v.stdout.trim().parse::<u64>().unwrap_or(0);
            }
            let log = g.run(&["cat", &format!("/tmp/{name}.log")]);
            assert!(
                Instant::now() < deadline,
                "{name} loop did not finish: {log:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        loops.insert(name, n);
    }
    let lsmod = g.run(&["cat", "/proc/modules"]);
    let after = g.stats();
    eprintln!("loops {loops:?}; stats {after:?}");
    assert!(loops["reload"] >= 5, "{loops:?}");
    assert!(loops["reclaim"] >= 5, "{loops:?}");
    assert!(
        lsmod.stdout.contains("gpuswap_shrinker"),
        "module not loaded at the end: {lsmod:?}"
    );
    assert!(after.evictions > before.evictions, "{after:?}");
    assert!(after.restores > before.restores, "{after:?}");

    // Still working after the last reload: reads restore, reclaim evicts.
    for (i, bo) in bos.iter().enumerate() {
        g.verify(bo, i as u64, Pattern::Random);
    }
    let evictions = g.stats().evictions;
    g.run(&["sh", "-c", "echo 2 > /proc/sys/vm/drop_caches"]);
    assert!(
        g.stats().evictions > evictions,
        "no eviction after the last reload"
    );
    for (i, bo) in bos.iter().enumerate() {
        g.verify(bo, i as u64, Pattern::Random);
        g.close(bo);
    }
    g.finish();
}

/// Unbinding the virtio-gpu device while a scan loop runs and BOs (resident,
/// evicted, attached) are open: the device leaves the shrinker registry
/// before it goes away, scans stop finding it, and the BOs can still be
/// closed.
#[test]
fn unbind_with_bos_and_scans_running() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("evict-unbind", 512, "");
    let mut bos: Vec<Bo> = (0..6).map(|_| g.create_2d(512, 256)).collect();
    for (i, bo) in bos.iter_mut().enumerate() {
        g.write(bo, i as u64, 1, Pattern::Random);
        g.transfer(bo);
    }
    g.scan(ScanMode::Evict, 1 << 20);
    for (i, bo) in bos.iter().enumerate().take(3) {
        g.verify(bo, i as u64, Pattern::Random);
        g.transfer(bo);
    }
    let dev = g.run(&[
        "sh",
        "-c",
        "cd /sys/bus/virtio/drivers/virtio_gpu && echo virtio*",
    ]);
    let dev = dev.stdout.trim().to_string();
    g.req(agent::ScanLoopStart {
        pages: 1 << 20,
        mode: Some(ScanMode::All),
        interval_ms: Some(1),
    });
    std::thread::sleep(Duration::from_millis(300));
    let unbind = g.run(&[
        "sh",
        "-c",
        &format!("echo {dev} > /sys/bus/virtio/drivers/virtio_gpu/unbind"),
    ]);
    eprintln!("unbind {dev}: {unbind:?}");
    assert_eq!(unbind.status, Some(0), "{unbind:?}");
    std::thread::sleep(Duration::from_millis(300));
    let looped = g.req(agent::ScanLoopStop {});
    eprintln!("scan loop {looped:?}");
    assert!(looped.scans > 0, "{looped:?}");
    if looped.errors > 0 {
        let first = looped.first_error.as_deref().unwrap_or("");
        assert!(
            first.contains("os error 19"),
            "scans after unbind: {looped:?}"
        );
    }
    // Every ioctl of the unplugged device fails with ENODEV; the BOs go
    // with the DRM file when the agent exits.
    const ENODEV: i64 = 19;
    assert_eq!(
        g.req_errno(agent::TransferToHost {
            handle: bos[0].handle,
            barrier: Some(false),
            ..agent::TransferToHost::default()
        }),
        Some(ENODEV)
    );
    assert_eq!(
        g.req_errno(agent::Close {
            handle: bos[0].handle
        }),
        Some(ENODEV)
    );
    let _ = g.agent.request(agent::Exit { status: Some(0) });
    let vm = g.vm.take().expect("vm");
    let status = vm.wait(GuestSession::EXIT_TIMEOUT).expect("QEMU exits");
    let log = std::fs::read_to_string(&g.serial).expect("serial log");
    let problems = kernel_problems(&log);
    assert!(
        problems.is_empty(),
        "guest kernel reported problems:\n{}\n\nlog tail:\n{}",
        problems.join("\n"),
        tail(&g.serial, 80)
    );
    assert!(status.success(), "QEMU exited with {status}");
    let violations = g.control.violations().expect("trace");
    assert!(violations.is_empty(), "protocol violations: {violations:?}");
}

/// The stall test (after igt's shrinker tests, which over-commit RAM from
/// forked processes): the daemon completes every DETACH_BACKING 5 s late
/// while four guest processes fault in anonymous memory that, with the
/// buffers, over-commits the guest's RAM, so their page faults reclaim and
/// call the shrinker. No allocation may wait behind the delayed fences:
/// every 4 KiB page takes under 2 s, its first touch and anything else the
/// process faulted on the way included, and the kernel reports no hung
/// task or RCU stall; the buffers keep their content. Measured on a loaded
/// 2-core host (debug kernel; a KASAN build alongside): the series without
/// 0012 stalled every process 240 s (one scan waiting 5 s for each of 48
/// DETACHes under the registry mutex); 0012 waiting 20 ms in every scan
/// while one batch was out, 2.0-2.1 s; 0012 waiting once per batch, 0.9 s.
///
/// A KASAN kernel keeps RAM for itself ([`gpuswap_tests::squeezed_guest_mib`]),
/// which its guest gets on top, so the processes over-commit about the same
/// usable RAM on both kernels (in a 384 MiB KASAN guest zram's compressed
/// copies filled what was left, and with init's 16 MiB reserve for zram one
/// process was OOM-killed). KASAN is also slower at everything reclaim does
/// (the slowest page 1.0-1.2 s there, 0.4-0.5 s here): there the host's
/// delay and the bound grow by the same factor, so that the bound stays as
/// far below the delay as here (0.4 of it), which is what shows that no
/// allocation waited for a DETACH.
#[test]
fn no_allocation_waits_behind_a_slow_detach() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let slowdown = if Images::get().kernel_is_kasan() {
        3
    } else {
        1
    };
    let (delay_ms, bound_ms) = (5000 * slowdown, 2000 * slowdown);
    let delay = format!("resource_detach_backing={delay_ms}");
    let mut g = Guest(GuestSession::boot_with_daemon(
        "evict-slow-host",
        &VmConfig {
            // The same over-commit of about the same usable RAM on both.
            memory_mib: gpuswap_tests::squeezed_guest_mib(384),
            append: "gpuswap.cmd=agent gpuswap.zram=768M".into(),
            ..VmConfig::default()
        },
        &["--fault-delay", &delay],
    ));
    // 48 MiB of idle, attached buffers for the shrinker to take.
    let mut bos: Vec<Bo> = (0..48).map(|_| g.create_2d(512, 512)).collect();
    for (i, bo) in bos.iter_mut().enumerate() {
        g.write(bo, i as u64, 1, Pattern::Random);
        g.transfer(bo);
    }
    let before = g.stats();
    let out = g.run(&[
        "/bin/sh",
        "-c",
        "for i in 1 2 3 4; do /bin/gpuswap-guest touch --mib 72 & done; wait",
    ]);
    let after = g.stats();
    let runs: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}\n{out:?}")))
        .collect();
    assert_eq!(runs.len(), 4, "every process reports: {out:?}");
    eprintln!("first touches: {runs:?}\nshrinker before {before:?} after {after:?}");
    for r in &runs {
        assert_eq!(r["pages"], 72 * 256, "{r}");
        let max = r["max_touch_ms"].as_f64().unwrap();
        assert!(
            max < f64::from(bound_ms),
            "a page waited {max:.0} ms (bound {bound_ms} ms, DETACH {delay_ms} ms): {r}"
        );
    }
    // The pressure reached the shrinker, whose DETACHes the host delayed.
    assert!(
        after.evictions > before.evictions || after.other["detaching_pages"] > 0,
        "the shrinker never took a buffer: {after:?}"
    );
    for (i, bo) in bos.iter().enumerate() {
        g.verify(bo, i as u64, Pattern::Random);
    }
    for bo in &bos {
        g.close(bo);
    }
    g.finish();
}

/// Runs a shell command in the guest; its stdout.
fn sh(g: &mut Guest, script: &str) -> String {
    let v = g.run(&["sh", "-c", script]);
    assert_eq!(v.status, Some(0), "{script}: {v:?}");
    v.stdout
}

/// The kernel's own shrinker interface (CONFIG_SHRINKER_DEBUG:
/// /sys/kernel/debug/shrinker/<name>-<id>/{count,scan}) drives the Rust
/// shrinker as reclaim does: `count` reports the idle BOs' pages, a `scan`
/// evicts them (the daemon sees them detached), and they come back intact.
#[test]
fn the_kernels_shrinker_interface_counts_and_evicts_idle_bos() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("evict-shrinker-debugfs", 512, "");
    let dir = sh(
        &mut g,
        "ls -d /sys/kernel/debug/shrinker/gpuswap-virtio-gpu-*",
    );
    let dir = dir.trim().to_string();
    assert!(
        dir.starts_with("/sys/kernel/debug/shrinker/gpuswap-virtio-gpu-"),
        "no debugfs directory for the shrinker: {dir:?}"
    );
    // `count` prints "<memcg inode> <objects per node>" (nothing at all
    // when there is nothing to reclaim).
    let count = |g: &mut Guest| -> u64 {
        sh(g, &format!("cat {dir}/count"))
            .split_whitespace()
            .skip(1)
            .map(|n| n.parse::<u64>().unwrap())
            .sum()
    };
    let idle_before = count(&mut g);

    let mut bos: Vec<Bo> = (0..4).map(|_| g.create_2d(512, 512)).collect();
    for (i, bo) in bos.iter_mut().enumerate() {
        g.write(bo, i as u64, 1, Pattern::Random);
        g.transfer(bo);
        g.assert_host_copy(bo);
    }
    let pages = 4 * 512 * 512 * 4 / 4096;
    let idle = count(&mut g);
    assert!(
        idle >= idle_before + pages,
        "count {idle} after 4 idle 1 MiB BOs (before: {idle_before})"
    );

    let before = g.stats();
    // "<memcg inode> <node> <objects to scan>"; this shrinker is not
    // memcg-aware: inode 0. One scan evicts one bounded batch and waits a
    // bounded time for it (see the patches' README), so, as reclaim does,
    // scan again until all four are out (at most 8 scans).
    let mut after = before.clone();
    for scan in 0..8 {
        if after.evictions >= before.evictions + 4 {
            break;
        }
        sh(&mut g, &format!("echo '0 0 {idle}' > {dir}/scan"));
        after = g.stats();
        eprintln!("scan {scan}: {after:?}");
    }
    assert!(
        after.evictions >= before.evictions + 4,
        "{before:?} -> {after:?}"
    );
    assert!(count(&mut g) <= idle - pages, "count after the scan");
    for bo in &bos {
        assert_eq!(g.host(bo).backing, Backing::Detached);
    }
    for (i, bo) in bos.iter().enumerate() {
        g.verify(bo, i as u64, Pattern::Random);
        g.transfer(bo);
        g.assert_host_copy(bo);
        g.close(bo);
    }
    g.finish();
}

/// One round of the igt-style shrink test (see [`igt_style_shrink`]).
#[derive(Debug, Clone, Copy)]
struct ShrinkRound {
    variant: &'static str,
    dontneed_share: f64,
    /// An anonymous-memory hog (MiB) racing the buffers for RAM.
    hog_mib: u64,
    /// 4 MiB buffers per process.
    bos: u64,
}

const SHRINK_PROCESSES: u64 = 4;
const SHRINK_ROUNDS: u64 = 2;
const SHRINK_BO_MIB: u64 = 4;

/// The igt-style guest: RAM and zram swap, in MiB.
const SHRINK_RAM_MIB: u32 = 384;
const SHRINK_SWAP_MIB: u64 = 256;

/// Buffers per process, sized as igt sizes its shrinker tests: all of them
/// together are the guest's RAM plus a quarter of its swap (28 each in the
/// 384 MiB guest). A KASAN kernel keeps some RAM for itself
/// ([`gpuswap_tests::KASAN_OVERHEAD_MIB`]), which is not the guest's to fill.
fn shrink_bos() -> u64 {
    let mut ram_mib = u64::from(SHRINK_RAM_MIB);
    if Images::get().kernel_is_kasan() {
        ram_mib -= u64::from(gpuswap_tests::KASAN_OVERHEAD_MIB);
    }
    (ram_mib + SHRINK_SWAP_MIB / 4).div_ceil(SHRINK_PROCESSES * SHRINK_BO_MIB)
}

/// Shaped like igt's `gem_shrink` / `msm_shrink`: four processes each hold
/// `round.bos` buffers of 4 MiB, in all as much as the guest's RAM plus a
/// quarter of its swap (igt's sizing, [`shrink_bos`]), so the shrinker must
/// evict some for the others to be written; then each process uses its
/// buffers twice more (`mmap`: read back through the mapping; `transfer`:
/// to the host, whose copies are checked). `-madvise`: a quarter are
/// DONTNEED, which the shrinker may purge (a purged one must refuse a
/// touch), and the rest stay intact. With `hog_mib`, an anonymous-memory
/// hog races them (igt's `-oom`).
fn igt_style_shrink(g: &mut Guest, round: ShrinkRound, seed: u64) {
    let before = g.stats();
    sh(g, "rm -f /tmp/shrink-*");
    let script = format!(
        "for i in $(seq 0 {last}); do \
           (/bin/gpuswap-guest shrink --variant {variant} --id $i --bos {bos} --rows 1024 \
              --rounds {rounds} --seed {seed} --dontneed-share {share} \
              --hold-until /tmp/shrink-go >/tmp/shrink-$i.json 2>/tmp/shrink-$i.err; \
            echo $? >/tmp/shrink-$i.rc) </dev/null >/dev/null 2>&1 & \
         done",
        last = SHRINK_PROCESSES - 1,
        variant = round.variant,
        bos = round.bos,
        rounds = SHRINK_ROUNDS,
        share = round.dontneed_share,
    );
    sh(g, &script);
    if round.hog_mib > 0 {
        // The hog (oom_score_adj 1000) is the OOM killer's to take, while
        // it fills (`killed_pid`) or later (`pid`).
        let hog = g.req(agent::Hog { mib: round.hog_mib });
        expect_hog_kill(g, &hog);
    }
    let reports_ready = |g: &mut Guest| {
        let lines = sh(g, "cat /tmp/shrink-*.json 2>/dev/null; true");
        let exited = sh(g, "cat /tmp/shrink-*.rc 2>/dev/null; true");
        // A process that failed before its report has an exit status.
        (lines.lines().count() as u64 == SHRINK_PROCESSES || !exited.trim().is_empty())
            .then_some(lines)
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let lines = loop {
        if let Some(lines) = reports_ready(g) {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "{round:?}: the shrink processes did not report"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let errors = sh(g, "cat /tmp/shrink-*.err 2>/dev/null; true");
    let reports: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{errors}")))
        .collect();
    assert_eq!(
        reports.len() as u64,
        SHRINK_PROCESSES,
        "{round:?}: {errors}"
    );
    let dontneed = (round.bos as f64 * round.dontneed_share).ceil() as u64;
    let mut purged = 0;
    for r in &reports {
        assert_eq!(r["mismatches"], json!([]), "{round:?}: {r}");
        assert_eq!(r["purged_but_readable"], 0, "{round:?}: {r}");
        assert_eq!(
            r["checked"].as_u64(),
            Some(SHRINK_ROUNDS * (round.bos - dontneed)),
            "{round:?}: {r}"
        );
        purged += r["purged"].as_u64().unwrap();
        if round.variant == "transfer" {
            // Their host copies are what each process last transferred.
            for bo in r["bos"].as_array().unwrap() {
                if bo["dontneed"] == true {
                    continue;
                }
                let res_id = u32::try_from(bo["res_id"].as_u64().unwrap()).unwrap();
                let Some(host) = g.control.resource(res_id).unwrap() else {
                    let story = g.control.trace(0, Some(res_id)).unwrap();
                    panic!("{round:?}: {bo} not on the host; its daemon events: {story:#?}");
                };
                assert_eq!(json!(host.host_hash), bo["hash"], "{round:?}: {host:?}");
            }
        }
    }
    if round.hog_mib > 0 {
        let hog = g.req(agent::Hog { mib: 0 });
        expect_hog_kill(g, &hog);
        eprintln!("{round:?}: hog OOM-killed: {}", hog.oom_killed);
    }
    sh(g, "touch /tmp/shrink-go");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rcs = sh(g, "cat /tmp/shrink-*.rc 2>/dev/null; true");
        if rcs.lines().count() as u64 == SHRINK_PROCESSES {
            assert!(
                rcs.lines().all(|l| l.trim() == "0"),
                "{round:?}: {rcs}\n{errors}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{round:?}: processes did not exit"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = g.stats();
    let evictions = after.evictions - before.evictions;
    let restores = after.restores - before.restores;
    let purges = after.purges - before.purges;
    eprintln!(
        "{round:?}: {evictions} evictions, {restores} restores, {purges} purges, \
         {purged} purged seen"
    );
    // Over-committed: the shrinker had to evict, and buffers came back.
    assert!(evictions > 0 && restores > 0, "{round:?}: {after:?}");
    if round.dontneed_share > 0.0 {
        assert!(purged > 0, "{round:?}: nothing purged: {after:?}");
    }
}

/// The hog of a `hog` reply may be OOM-killed: its report in the kernel
/// log is then no problem.
fn expect_hog_kill(g: &mut Guest, hog: &HogReport) {
    for pid in [hog.pid, hog.killed_pid].into_iter().flatten() {
        if let Ok(pid) = u32::try_from(pid) {
            g.0.expected_oom_kills.push(pid);
        }
    }
}

fn igt_style_shrink_rounds(variant: &'static str) {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot(
        &format!("evict-igt-{variant}"),
        SHRINK_RAM_MIB,
        &format!("gpuswap.zram={SHRINK_SWAP_MIB}M"),
    );
    // Requests made while the guest is over-committed can take long.
    g.agent.set_timeout(Duration::from_secs(120));
    let bos = shrink_bos();
    // Plain, -madvise, and -oom: a 128 MiB anonymous hog races the buffers
    // (the OOM killer may take the hog, igt's expected outcome, which the
    // clean-kernel-log check then forgives; nothing else may be killed:
    // every process must report intact buffers).
    for (i, (dontneed_share, hog_mib)) in [(0.0, 0), (0.25, 0), (0.0, 128)].into_iter().enumerate()
    {
        let round = ShrinkRound {
            variant,
            dontneed_share,
            hog_mib,
            bos,
        };
        igt_style_shrink(&mut g, round, 100 + i as u64);
    }
    g.finish();
}

/// igt-style `copy-mmap`, `copy-mmap-madvise` and `copy-mmap-oom`.
#[test]
fn igt_style_copy_mmap_over_committed_and_with_madvise() {
    igt_style_shrink_rounds("mmap");
}

/// igt-style `copy-transfer`, `copy-transfer-madvise` and
/// `copy-transfer-oom`: the host's copies are what each process last
/// transferred.
#[test]
fn igt_style_copy_transfer_over_committed_and_with_madvise() {
    igt_style_shrink_rounds("transfer");
}

/// `cargo xtask bench --guest` keeps measuring what it says: a small
/// `reclaim-bench` evicts every BO, pages the anonymous copy out, gets the
/// evicted pages into zram before timing their restores, and reports a
/// positive time for every path (the numbers themselves are the
/// benchmark's, not asserted here).
#[test]
fn the_guest_reclaim_benchmark_measures_both_paths() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut g = Guest::boot("evict-reclaim-bench", 384, "gpuswap.zram=384M");
    g.agent.set_timeout(Duration::from_secs(300));
    let out = sh(
        &mut g,
        "/bin/gpuswap-guest reclaim-bench --bos 4 --rounds 1",
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let r = &v["rounds"][0];
    assert_eq!(r["evicted_mib"], 16.0, "{v}");
    for key in ["paged_out_mib", "shmem_mib_pushed_to_swap"] {
        assert!(r[key].as_f64().is_some_and(|m| m >= 15.0), "{key}: {v}");
    }
    for key in [
        "evict_mib_per_s",
        "pageout_mib_per_s",
        "bo_first_touch_ms_p50",
        "bo_first_transfer_ms_p50",
        "anon_first_touch_ms_p50",
        "anon_chunk_swapin_ms_p50",
    ] {
        assert!(r[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    g.finish();
}
