//! The device-level property test (`crates/device/tests/model.rs`) again,
//! over the daemon's sockets: random command sequences against the same
//! reference model (`gpuswap_testkit::model`). The rules are the device's
//! and tested there; this test checks what the transport adds:
//!
//! - requests and guest writes travel through the frontend's rings and
//!   memfd guest RAM, mapped by the daemon from a two-region memory table
//!   the model's pages run across; attaches and detaches are fenced, as the
//!   guest's eviction path sends them, and every answer must echo its
//!   fence;
//! - each answer comes back over the ring with the model's code;
//! - after every step the control socket shows the model's state:
//!   `resources` (backing, generation, entries, host and backing hashes,
//!   scanouts), `host_memory_used`, and a `trace` with the predicted
//!   violations, faults, attaches and detaches; at the end of a case the
//!   `violations` counter agrees;
//! - attach faults are armed through the control socket.
//!
//! One daemon and one frontend serve every case; RESET_DEVICE between
//! cases starts each from nothing. The RNG is deterministic. The display
//! is not checked here (headless): what the display channel carries is
//! `commands.rs`'s. Resets inside a case go through the socket too
//! (RESET_DEVICE while the worker polls the ring once dropped the
//! connection: `lifecycle.rs` tests that race on its own).

mod common;

use std::cell::RefCell;

use common::*;
use gpuswap_api::control::{self as api, EventKind, Fault, Resource, ResourceKind};
use gpuswap_device::{ENTRY_OVERHEAD, RESOURCE_OVERHEAD};
use gpuswap_frontend::{
    Error, Fence, FrontendConfig, GpuFrontend, Pages, Placement, RegionSpec, Result as GpuResult,
};
use gpuswap_protocol::wire::{MemEntry, SetScanoutBlob};
use gpuswap_protocol::{blob_mem, ErrorCode};
use gpuswap_testkit::model::{
    self, Budget, DetachReason, DeviceUnderTest, Events, Model, Request, Shown, View, Violation,
    PAGE, PAGES,
};
use gpuswap_testkit::ControlClient;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// The first region ends here; the second holds the model's upper half.
const LOW_END: u64 = 32 << 20;
/// Plenty: memory pressure is the device-level test's.
const MAX_HOST_MEMORY: u64 = 1 << 30;

/// The daemon over its sockets.
struct OverSockets<'a> {
    gpu: &'a mut GpuFrontend,
    ctl: &'a mut ControlClient,
    /// The last trace event seen.
    seq: u64,
    /// Fences sent so far.
    fences: u64,
    /// Violations seen in the trace.
    violations: u64,
}

fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

fn mem_entries(entries: &[(u64, u32)]) -> Vec<MemEntry> {
    entries
        .iter()
        .map(|&(addr, length)| MemEntry {
            addr,
            length,
            padding: 0,
        })
        .collect()
}

fn view(r: &Resource) -> View {
    let kind = match r.kind {
        ResourceKind::TwoD => "2d",
        ResourceKind::Blob => "blob",
    };
    View {
        id: r.id,
        kind: kind.into(),
        width: r.width,
        height: r.height,
        size: r.size,
        backing: if r.is_attached() {
            "attached"
        } else {
            "detached"
        }
        .into(),
        generation: r.generation,
        entries: r.entries as usize,
        backing_bytes: r.backing_bytes,
        host_hash: r.host_hash.clone(),
        backing_hash: r.backing_hash.clone(),
        scanouts: r.scanouts.clone(),
    }
}

/// A violation as the model names it.
fn violation(v: api::Violation) -> Violation {
    match v {
        api::Violation::UseWhileDetached => Violation::UseWhileDetached,
        api::Violation::DoubleAttach => Violation::DoubleAttach,
        api::Violation::DoubleDetach => Violation::DoubleDetach,
        api::Violation::OverlappingBacking { other } => Violation::OverlappingBacking { other },
        api::Violation::UnknownResource => Violation::UnknownResource,
        api::Violation::DuplicateResource => Violation::DuplicateResource,
        other => Violation::Other(format!("{other:?}")),
    }
}

/// Why a backing went, as the model names it.
fn detach_reason(r: api::DetachReason) -> DetachReason {
    match r {
        api::DetachReason::Command => DetachReason::Command,
        api::DetachReason::Unref => DetachReason::Unref,
        api::DetachReason::Reset => DetachReason::Reset,
        other => DetachReason::Other(format!("{other:?}")),
    }
}

fn fail_attaches(n: u32) -> Fault {
    Fault {
        fail_attaches: Some(n),
        ..Fault::default()
    }
}

impl OverSockets<'_> {
    fn fence(&mut self) -> Fence {
        self.fences += 1;
        Fence::new(self.fences)
    }
}

impl DeviceUnderTest for OverSockets<'_> {
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), TestCaseError> {
        self.gpu.ram().write(addr, data).map_err(fail)
    }

    fn send(&mut self, req: &Request) -> Result<Result<(), ErrorCode>, TestCaseError> {
        let r: GpuResult<()> = match *req {
            Request::Create2d { id, width, height } => {
                self.gpu
                    .resource_create_2d(id, model::FORMAT, width, height)
            }
            Request::CreateBlob {
                id,
                size,
                ref entries,
            } => self
                .gpu
                .resource_create_blob(id, blob_mem::GUEST, 0, size, &mem_entries(entries)),
            Request::Attach { id, ref entries } => {
                let fence = self.fence();
                self.gpu
                    .fenced(fence)
                    .attach_backing(id, &mem_entries(entries))
            }
            Request::Detach { id } => {
                let fence = self.fence();
                self.gpu.fenced(fence).detach_backing(id)
            }
            Request::Transfer { id, rect, offset } => {
                self.gpu.transfer_to_host_2d(id, rect, offset)
            }
            Request::Flush { id, rect } => self.gpu.resource_flush(id, rect),
            Request::SetScanout { id, rect } => self.gpu.set_scanout(0, id, rect),
            Request::SetScanoutBlob { id, rect, layout } => {
                self.gpu.set_scanout_blob(&SetScanoutBlob {
                    r: rect,
                    scanout_id: 0,
                    resource_id: id,
                    width: layout.width,
                    height: layout.height,
                    format: model::FORMAT,
                    padding: 0,
                    strides: [layout.stride, 0, 0, 0],
                    offsets: [layout.offset, 0, 0, 0],
                })
            }
            Request::Unref { id } => self.gpu.resource_unref(id),
        };
        match r {
            Ok(()) => Ok(Ok(())),
            Err(Error::Device(code)) => Ok(Err(code)),
            Err(e) => Err(fail(format!("transport failure: {e}"))),
        }
    }

    fn fail_attaches(&mut self, n: u32) -> Result<(), TestCaseError> {
        self.ctl
            .fault(fail_attaches(n))
            .map_err(|e| fail(format!("fault: {e}")))?;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), TestCaseError> {
        self.gpu
            .reset()
            .map_err(|e| fail(format!("RESET_DEVICE: {e}")))
    }

    fn events(&mut self) -> Result<Events, TestCaseError> {
        let mut events = Events::default();
        let trace = self
            .ctl
            .trace(self.seq, None)
            .map_err(|e| fail(format!("trace: {e}")))?;
        for e in trace {
            self.seq = self.seq.max(e.seq);
            let id = e.resource_id;
            match e.kind {
                EventKind::Violation {
                    violation: v,
                    command,
                } => {
                    events.violations.push((id, violation(v), command));
                    self.violations += 1;
                }
                EventKind::Fault { .. } => events.faults.push(id),
                EventKind::Detach { reason } => events.detaches.push((id, detach_reason(reason))),
                EventKind::Attach { .. } => events.attaches.push((id, e.generation)),
                _ => {}
            }
        }
        Ok(events)
    }

    fn shown(&mut self) -> Result<Option<Vec<Shown>>, TestCaseError> {
        Ok(None)
    }

    fn resources(&mut self) -> Result<Vec<View>, TestCaseError> {
        let resources = self
            .ctl
            .resources()
            .map_err(|e| fail(format!("resources: {e}")))?;
        Ok(resources.iter().map(view).collect())
    }

    fn host_memory_used(&mut self) -> Result<u64, TestCaseError> {
        let status = self
            .ctl
            .status()
            .map_err(|e| fail(format!("status: {e}")))?;
        Ok(status.host_memory_used)
    }

    fn hash(bytes: &[u8]) -> String {
        hash_hex(bytes)
    }
}

#[test]
fn random_command_sequences_match_the_model() {
    let max = MAX_HOST_MEMORY.to_string();
    let mut d = Daemon::spawn(
        "model",
        &[
            "--max-entries",
            "8",
            "--max-host-memory",
            &max,
            "--allow-fault-injection",
        ],
    );
    // The model's pages run from the end of the first region into a second,
    // adjacent one.
    let half = PAGES / 2 * PAGE;
    let mut gpu = d.connect(FrontendConfig {
        regions: vec![RegionSpec::new(0, LOW_END), RegionSpec::new(LOW_END, half)],
        ..FrontendConfig::default().headless()
    });
    let base = LOW_END - half;
    let pages: Pages = gpu
        .ram_mut()
        .alloc(PAGES as usize, Placement::At(base))
        .expect("the model's pages");
    assert_eq!(pages.addrs()[0], base);
    let gpu = RefCell::new(gpu);
    let ctl = RefCell::new(d.ctl());

    let config = Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let ops = model::ops(16..120);
    let result = runner.run(&ops, |ops| {
        let mut gpu = gpu.borrow_mut();
        let mut ctl = ctl.borrow_mut();
        gpu.reset().map_err(|e| fail(format!("reset: {e}")))?;
        ctl.fault(fail_attaches(0))
            .map_err(|e| fail(format!("fault: {e}")))?;
        let v0 = ctl.counters().unwrap().counters.violations;
        let seq = ctl.last_seq();
        let mut dut = OverSockets {
            gpu: &mut gpu,
            ctl: &mut ctl,
            seq,
            fences: 0,
            violations: 0,
        };
        let budget = Budget {
            max_host_memory: MAX_HOST_MEMORY,
            resource_overhead: RESOURCE_OVERHEAD,
            entry_overhead: ENTRY_OVERHEAD,
        };
        model::run(&mut dut, &mut Model::new(base, budget), &ops)?;
        let seen = dut.violations;
        let v1 = ctl.counters().unwrap().counters.violations;
        proptest::prop_assert_eq!(v1 - v0, seen, "violations counter");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\ndaemon log:\n{}", d.log());
    }
    d.assert_alive();
}
