//! The guest workload: buffers of mixed sizes and kinds, each written
//! through its mapping with content that follows from (seed, buffer,
//! version), transferred to the host, read back, madvised, closed and
//! created again; one of them stays on scanout. Every step is checked
//! from the guest side and through the daemon's control socket.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::rng::Rng;
use super::Run;
use crate::Result;

/// Harness-side history kept per buffer for failure reports.
const HISTORY: usize = 24;
/// How long the host may take to see a blob's new backing (ATTACH is
/// queued by the guest's fault and processed asynchronously).
const HOST_SETTLE: Duration = Duration::from_secs(3);

/// The scanout buffer's size: one of the display's modes.
const SCANOUT_SIZE: (u32, u32) = (1024, 768);

const EINVAL: i64 = 22;
const SIGBUS: i64 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoKind {
    TwoD,
    Blob,
}

impl BoKind {
    fn name(self) -> &'static str {
        match self {
            BoKind::TwoD => "2d",
            BoKind::Blob => "blob",
        }
    }
}

#[derive(Debug)]
pub struct Bo {
    /// Unique per created buffer: the pattern's `bo` key.
    pub serial: u64,
    pub handle: u64,
    pub res_id: u64,
    pub kind: BoKind,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    /// Incompressible content for some, compressible for the rest, so
    /// that eviction to zram really frees memory.
    pub pattern: &'static str,
    /// Last version written (0: none yet).
    pub version: u64,
    /// The guest's hash of that version.
    pub hash: Value,
    /// Takes part in madvise cycles.
    pub madvise: bool,
    /// Currently DONTNEED: must not be touched before WILLNEED.
    pub dontneed: bool,
    pub history: VecDeque<Value>,
}

impl Bo {
    fn note(&mut self, action: &str, detail: Value) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(json!({
            "time_us": crate::unix_us(),
            "action": action,
            "version": self.version,
            "detail": detail,
        }));
    }

    fn pattern_args(&self, version: u64, seed: u64) -> Value {
        json!({"handle": self.handle, "seed": seed, "bo": self.serial, "version": version, "pattern": self.pattern})
    }
}

/// Counts of what the workload did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Totals {
    pub steps: u64,
    pub created_2d: u64,
    pub created_blobs: u64,
    pub writes: u64,
    pub transfers: u64,
    pub verifies: u64,
    pub dontneed: u64,
    pub willneed: u64,
    pub purged_seen: u64,
    pub recreated: u64,
    pub scanout_flips: u64,
    pub bytes_written: u64,
}

impl Run {
    /// Creates the buffer for `slot` (new or replacing a closed one).
    pub(super) fn create_bo(&mut self, slot: usize) -> Result<Bo> {
        // Each buffer's traits come from its own stream (seed, serial), not
        // from the action stream: a buffer replaced because the shrinker
        // purged it does not shift the actions that follow.
        self.next_serial += 1;
        let serial = self.next_serial;
        let mut rng = Rng::new(self.o.seed ^ serial.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (width, height) = if slot == 0 {
            SCANOUT_SIZE
        } else {
            self.o.sizes[rng.below(self.o.sizes.len() as u64) as usize]
        };
        let kind = if self.blob && rng.chance(self.o.blob_share) {
            BoKind::Blob
        } else {
            BoKind::TwoD
        };
        let bytes = u64::from(width) * u64::from(height) * 4;
        let created = match kind {
            BoKind::TwoD => self
                .agent
                .request(json!({"op": "create_2d", "width": width, "height": height}))?,
            BoKind::Blob => self
                .agent
                .request(json!({"op": "create_blob", "size": bytes}))?,
        };
        match kind {
            BoKind::TwoD => self.totals.created_2d += 1,
            BoKind::Blob => self.totals.created_blobs += 1,
        }
        let mut bo = Bo {
            serial,
            handle: created["handle"].as_u64().ok_or("create: no handle")?,
            res_id: created["res_id"].as_u64().ok_or("create: no res_id")?,
            kind,
            width,
            height,
            bytes,
            pattern: if rng.chance(0.25) { "random" } else { "sparse" },
            version: 0,
            hash: Value::Null,
            madvise: slot != 0 && rng.chance(self.o.madvise_share),
            dontneed: false,
            history: VecDeque::new(),
        };
        bo.note(
            "create",
            json!({"kind": kind.name(), "bytes": bytes, "res_id": bo.res_id}),
        );
        Ok(bo)
    }

    /// One workload step on a random buffer (slot 0 is the scanout one).
    pub(super) fn step(&mut self) -> Result<()> {
        self.totals.steps += 1;
        if self.totals.steps.is_multiple_of(25) {
            return self.flip_scanout();
        }
        let slot = 1 + self.rng.below(self.bos.len() as u64 - 1) as usize;
        let bo = &self.bos[slot];
        if bo.dontneed {
            return self.willneed(slot);
        }
        if bo.version == 0 {
            return self.publish(slot);
        }
        let roll = self.rng.below(100);
        match roll {
            0..=39 => self.publish(slot),
            40..=79 => self.verify(slot, "guest_content_intact"),
            80..=95 if bo.madvise => self.dontneed(slot),
            96..=98 => self.recreate(slot, "churn"),
            _ => self.verify(slot, "guest_content_intact"),
        }
    }

    /// Writes the next version through the mapping and makes the host see
    /// it: a transfer for 2D, nothing for a blob (its pages are shared);
    /// then checks the host's view.
    pub(super) fn publish(&mut self, slot: usize) -> Result<()> {
        let version = self.bos[slot].version + 1;
        let mut write = self.bos[slot].pattern_args(version, self.o.seed);
        write["op"] = json!("write");
        let written = self.agent.request(write)?;
        self.totals.writes += 1;
        self.totals.bytes_written += self.bos[slot].bytes;
        let bo = &mut self.bos[slot];
        bo.version = version;
        bo.hash = written["hash"].clone();
        bo.note("write", json!({"hash": bo.hash}));
        match bo.kind {
            BoKind::TwoD => {
                let handle = bo.handle;
                let transfer = self
                    .agent
                    .request(json!({"op": "transfer_to_host", "handle": handle}))?;
                self.totals.transfers += 1;
                self.bos[slot].note("transfer_to_host", transfer);
                self.check_host(slot, true)
            }
            BoKind::Blob => self.check_host(slot, false),
        }
    }

    /// The daemon's view of a buffer against the guest's hash: the host
    /// copy (2D, right after a transfer) and the attached backing (both;
    /// skipped when reclaim detached it meanwhile).
    fn check_host(&mut self, slot: usize, transferred: bool) -> Result<()> {
        let (res_id, hash) = (self.bos[slot].res_id, self.bos[slot].hash.clone());
        let deadline = Instant::now() + HOST_SETTLE;
        let host = loop {
            let host = self.control.resource(res_id)?.unwrap_or(Value::Null);
            let settled = host["backing"] == "attached" && host["backing_hash"] == hash;
            // The host copy changed while the daemon hashed it (the guest
            // restored it meanwhile): that reply has no hash to compare.
            let torn = host["host_changed"] == true;
            // A 2D transfer is complete when the agent answers; a blob's
            // ATTACH may still be on its way.
            if (transferred && !torn) || settled || Instant::now() > deadline {
                break host;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if transferred {
            let ok = host["host_hash"] == hash;
            self.check(
                "host_copy_matches_guest",
                ok,
                Some(slot),
                json!({"guest_hash": hash, "host_hash": host["host_hash"]}),
            )?;
        }
        if host["backing"] == "attached" {
            let ok = host["backing_hash"] == hash;
            self.check(
                "attached_backing_matches_guest",
                ok,
                Some(slot),
                json!({"guest_hash": hash, "backing_hash": host["backing_hash"], "generation": host["generation"]}),
            )?;
        } else if self.bos[slot].kind == BoKind::Blob && host.is_null() {
            self.check(
                "attached_backing_matches_guest",
                false,
                Some(slot),
                json!({"error": "the daemon does not know this resource"}),
            )?;
        } else {
            self.checks.skip("attached_backing_matches_guest");
        }
        Ok(())
    }

    /// Reads the buffer back through its mapping (restoring it if it was
    /// evicted) and compares with what was last written.
    pub(super) fn verify(&mut self, slot: usize, check: &'static str) -> Result<()> {
        let bo = &self.bos[slot];
        let mut verify = bo.pattern_args(bo.version, self.o.seed);
        verify["op"] = json!("verify");
        let verified = self.agent.request(verify)?;
        self.totals.verifies += 1;
        let ok = verified["ok_content"] == json!(true);
        self.bos[slot].note("verify", verified.clone());
        self.check(check, ok, Some(slot), verified)
    }

    fn dontneed(&mut self, slot: usize) -> Result<()> {
        let handle = self.bos[slot].handle;
        let r = self
            .agent
            .request(json!({"op": "madvise", "handle": handle, "madv": "dontneed"}))?;
        self.totals.dontneed += 1;
        let bo = &mut self.bos[slot];
        bo.dontneed = true;
        bo.note("madvise_dontneed", r);
        Ok(())
    }

    /// WILLNEED on a DONTNEED buffer: if it was kept, its content must be
    /// intact; if it was purged, using it must fail as documented (-EINVAL
    /// for a transfer, SIGBUS for a touch) and it is replaced.
    fn willneed(&mut self, slot: usize) -> Result<()> {
        let handle = self.bos[slot].handle;
        let r = self
            .agent
            .request(json!({"op": "madvise", "handle": handle, "madv": "willneed"}))?;
        self.totals.willneed += 1;
        let retained = r["retained"] == json!(true);
        self.bos[slot].dontneed = false;
        self.bos[slot].note("madvise_willneed", r);
        if retained {
            return self.verify(slot, "guest_content_intact");
        }
        self.totals.purged_seen += 1;
        let (ok, detail) = match self.bos[slot].kind {
            BoKind::TwoD => {
                let errno = self
                    .agent
                    .request_errno(json!({"op": "transfer_to_host", "handle": handle}))?;
                (errno == Some(EINVAL), json!({"transfer_errno": errno}))
            }
            BoKind::Blob => {
                let touched = self
                    .agent
                    .request(json!({"op": "touch", "handle": handle}))?;
                (touched["signal"] == json!(SIGBUS), touched)
            }
        };
        self.bos[slot].note("use_after_purge", detail.clone());
        self.check("purged_buffer_refuses_use", ok, Some(slot), detail)?;
        self.recreate(slot, "purged")
    }

    /// Closes the buffer and creates a new one in its slot.
    pub(super) fn recreate(&mut self, slot: usize, why: &str) -> Result<()> {
        let handle = self.bos[slot].handle;
        self.agent
            .request(json!({"op": "close", "handle": handle}))?;
        let old = self.bos[slot].res_id;
        self.bos[slot] = self.create_bo(slot)?;
        self.totals.recreated += 1;
        self.bos[slot].note("recreate", json!({"why": why, "replaces_res_id": old}));
        Ok(())
    }

    /// Puts slot 0 on the scanout (first call) or writes a new version and
    /// flips to it again; a scanout buffer is pinned: never evicted, always
    /// attached with the guest's content.
    pub(super) fn flip_scanout(&mut self) -> Result<()> {
        self.publish(0)?;
        let bo = &self.bos[0];
        let mut scanout = json!({"op": "scanout", "handle": bo.handle});
        if bo.kind == BoKind::Blob {
            scanout["width"] = json!(bo.width);
            scanout["height"] = json!(bo.height);
        }
        let r = self.agent.request(scanout)?;
        self.totals.scanout_flips += 1;
        self.bos[0].note("scanout", r);
        self.check_scanout()
    }

    /// The scanout buffer is attached and shown (checked at every sample).
    pub(super) fn check_scanout(&mut self) -> Result<()> {
        if self.bos[0].version == 0 {
            return Ok(());
        }
        let host = self
            .control
            .resource(self.bos[0].res_id)?
            .unwrap_or(Value::Null);
        let shown = host["scanouts"].as_array().is_some_and(|s| !s.is_empty());
        let ok = host["backing"] == "attached" && shown;
        self.check("scanout_stays_attached", ok, Some(0), json!({"host": host}))
    }

    /// Records a check; a failure gets the buffer's story from both sides.
    pub(super) fn check(
        &mut self,
        name: &'static str,
        ok: bool,
        slot: Option<usize>,
        detail: Value,
    ) -> Result<()> {
        if ok {
            self.checks.record(name, true, || Value::Null);
            return Ok(());
        }
        let context = match slot {
            Some(slot) => self.buffer_context(slot, detail),
            None => detail,
        };
        self.checks.record(name, false, || context);
        Ok(())
    }

    /// A buffer's identity, the harness's and guest's recent view of it and
    /// the daemon's trace of its resource, merged by time.
    fn buffer_context(&mut self, slot: usize, detail: Value) -> Value {
        let bo = &self.bos[slot];
        let (res_id, handle) = (bo.res_id, bo.handle);
        let guest_info = self
            .agent
            .request(json!({"op": "info", "handle": handle}))
            .unwrap_or_else(|e| json!({ "error": e }));
        let trace = self.control.trace(0, Some(res_id)).unwrap_or_default();
        let trace: Vec<Value> = trace.iter().rev().take(HISTORY).rev().cloned().collect();
        let bo = &self.bos[slot];
        json!({
            "res_id": res_id,
            "buffer": bo.serial,
            "slot": slot,
            "kind": bo.kind.name(),
            "size": [bo.width, bo.height],
            "bytes": bo.bytes,
            "pattern": bo.pattern,
            "version": bo.version,
            "detail": detail,
            "guest_info": guest_info,
            "guest_history": bo.history,
            "daemon_trace": trace,
            "t_s": self.started.elapsed().as_secs_f64(),
            "time_us": crate::unix_us(),
        })
    }

    /// At the end, with pressure released: every buffer restored and
    /// checked once more from both sides, then closed.
    pub(super) fn final_pass(&mut self) -> Result<()> {
        for slot in 0..self.bos.len() {
            if self.bos[slot].dontneed {
                self.willneed(slot)?;
            }
            if self.bos[slot].version == 0 {
                self.publish(slot)?;
            }
            self.verify(slot, "final_content_intact")?;
            // The host's view of the restored pages: re-attached by this
            // transfer (2D) or by the verify's fault (blob).
            if self.bos[slot].kind == BoKind::TwoD {
                let handle = self.bos[slot].handle;
                self.agent
                    .request(json!({"op": "transfer_to_host", "handle": handle}))?;
                self.totals.transfers += 1;
                self.check_host(slot, true)?;
            } else {
                self.check_host(slot, false)?;
            }
        }
        Ok(())
    }
}
