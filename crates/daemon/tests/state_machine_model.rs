//! A property test: random command sequences over the real socket against
//! a tiny reference model of the backing state machine (id -> attached?,
//! generation, host copy, scanout) that predicts OK or the exact error of
//! every step, and the final `resources` list, trace and violation count.
//!
//! One daemon and one frontend serve every case; RESET_DEVICE between
//! cases starts each from nothing. The RNG is deterministic.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;

use common::*;
use gpuswap_frontend::{Error, Fence, FrontendConfig, GpuFrontend, Pages, Placement};
use gpuswap_protocol::{format, ErrorCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::json;

const W: u32 = 16;
const H: u32 = 16;
const SIZE: usize = (W * H * 4) as usize;
const IDS: u32 = 3;

#[derive(Debug, Clone, Copy)]
enum Op {
    Create(u32),
    Unref(u32),
    Attach(u32),
    Detach(u32),
    Transfer(u32),
    Flush(u32),
    Scanout(u32),
    ScanoutOff,
}

fn id() -> impl Strategy<Value = u32> {
    // Mostly live-able ids, sometimes the reserved 0.
    prop_oneof![1 => Just(0u32), 12 => 1..=IDS]
}

fn op() -> impl Strategy<Value = Op> {
    // Weighted towards evict/restore cycles; unref is rare enough that
    // generations get deep.
    prop_oneof![
        2 => id().prop_map(Op::Create),
        1 => id().prop_map(Op::Unref),
        6 => id().prop_map(Op::Attach),
        5 => id().prop_map(Op::Detach),
        3 => id().prop_map(Op::Transfer),
        1 => id().prop_map(Op::Flush),
        1 => id().prop_map(Op::Scanout),
        1 => Just(Op::ScanoutOff),
    ]
}

#[derive(Debug, Clone)]
struct Res {
    attached: bool,
    generation: u64,
    host: Vec<u8>,
}

/// The reference model.
#[derive(Debug, Default)]
struct Model {
    live: BTreeMap<u32, Res>,
    scanout: Option<u32>,
    violations: u64,
    /// (id, generation) of every successful attach, in order.
    attaches: Vec<(u32, u64)>,
}

impl Model {
    /// `Ok` if live and attached, else the error (and a violation).
    fn usable(&mut self, id: u32) -> Result<(), ErrorCode> {
        match self.live.get(&id) {
            None => {
                self.violations += 1;
                Err(ErrorCode::InvalidResourceId)
            }
            Some(r) if !r.attached => {
                self.violations += 1;
                Err(ErrorCode::Unspec)
            }
            Some(_) => Ok(()),
        }
    }

    /// Predicts the response to `op`; `content` is what the id's pages hold.
    fn step(&mut self, op: Op, content: &[u8]) -> Result<(), ErrorCode> {
        match op {
            Op::Create(0) => Err(ErrorCode::InvalidResourceId),
            Op::Create(id) if self.live.contains_key(&id) => {
                self.violations += 1;
                Err(ErrorCode::InvalidResourceId)
            }
            Op::Create(id) => {
                let host = vec![0; SIZE];
                let r = Res {
                    attached: false,
                    generation: 0,
                    host,
                };
                self.live.insert(id, r);
                Ok(())
            }
            Op::Unref(id) => {
                if self.live.remove(&id).is_none() {
                    self.violations += 1;
                    return Err(ErrorCode::InvalidResourceId);
                }
                if self.scanout == Some(id) {
                    self.scanout = None;
                }
                Ok(())
            }
            Op::Attach(id) => match self.live.get_mut(&id) {
                None => {
                    self.violations += 1;
                    Err(ErrorCode::InvalidResourceId)
                }
                Some(r) if r.attached => {
                    self.violations += 1;
                    Err(ErrorCode::Unspec)
                }
                Some(r) => {
                    r.attached = true;
                    r.generation += 1;
                    self.attaches.push((id, r.generation));
                    Ok(())
                }
            },
            Op::Detach(id) => match self.live.get_mut(&id) {
                None => {
                    self.violations += 1;
                    Err(ErrorCode::InvalidResourceId)
                }
                Some(r) if !r.attached => {
                    self.violations += 1;
                    Err(ErrorCode::Unspec)
                }
                Some(r) => {
                    r.attached = false;
                    Ok(())
                }
            },
            Op::Transfer(id) => {
                self.usable(id)?;
                if let Some(r) = self.live.get_mut(&id) {
                    r.host.copy_from_slice(content);
                }
                Ok(())
            }
            Op::Flush(id) => self.usable(id),
            Op::Scanout(0) | Op::ScanoutOff => {
                self.scanout = None;
                Ok(())
            }
            Op::Scanout(id) => {
                self.usable(id)?;
                self.scanout = Some(id);
                Ok(())
            }
        }
    }
}

/// Sends `op` and returns the device's answer.
fn send(
    gpu: &mut GpuFrontend,
    op: Op,
    pages: &Pages,
    fence: u64,
) -> Result<Result<(), ErrorCode>, TestCaseError> {
    let full = rect(0, 0, W, H);
    let r = match op {
        Op::Create(id) => gpu.resource_create_2d(id, format::B8G8R8A8_UNORM, W, H),
        Op::Unref(id) => gpu.resource_unref(id),
        // Fenced, like the guest's eviction path.
        Op::Attach(id) => gpu
            .fenced(Fence::new(fence))
            .attach_backing(id, &pages.entries()),
        Op::Detach(id) => gpu.fenced(Fence::new(fence)).detach_backing(id),
        Op::Transfer(id) => gpu.transfer_to_host_2d(id, full, 0),
        Op::Flush(id) => gpu.resource_flush(id, full),
        Op::Scanout(id) => gpu.set_scanout(0, id, if id == 0 { rect(0, 0, 0, 0) } else { full }),
        Op::ScanoutOff => gpu.set_scanout(0, 0, rect(0, 0, 0, 0)),
    };
    match r {
        Ok(()) => Ok(Ok(())),
        Err(Error::Device(code)) => Ok(Err(code)),
        Err(e) => Err(TestCaseError::fail(format!(
            "{op:?}: transport failure: {e}"
        ))),
    }
}

#[test]
fn random_command_sequences_match_the_model() {
    let mut d = Daemon::spawn("model", &[]);
    let gpu = RefCell::new(d.connect(FrontendConfig::default().headless()));
    let ctl = RefCell::new(d.ctl());
    // One page per id, so backings never overlap.
    let pages: Vec<Pages> = (0..=IDS)
        .map(|_| {
            gpu.borrow_mut()
                .ram_mut()
                .alloc(1, Placement::Scattered)
                .unwrap()
        })
        .collect();
    let case = RefCell::new(0u64);

    let config = Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let result = runner.run(&proptest::collection::vec(op(), 16..96), |ops| {
        let mut gpu = gpu.borrow_mut();
        let mut ctl = ctl.borrow_mut();
        let mut n = case.borrow_mut();
        *n += 1;
        gpu.reset()
            .map_err(|e| TestCaseError::fail(format!("reset: {e}")))?;
        prop_assert_eq!(ctl.status()["resources"].clone(), json!(0));
        let v0 = ctl.counters()["counters"]["violations"].as_u64().unwrap();
        let seq0 = ctl.last_seq();

        let mut model = Model::default();
        // What each id's page holds (the guest rewrites it before attaching).
        let mut content: Vec<Vec<u8>> = vec![vec![0; SIZE]; IDS as usize + 1];
        for (i, &op) in ops.iter().enumerate() {
            if let Op::Attach(id) = op {
                let pix = pattern(SIZE, *n * 1000 + i as u64);
                gpu.ram()
                    .write(pages[id as usize].addrs()[0], &pix)
                    .unwrap();
                content[id as usize] = pix;
            }
            let id = match op {
                Op::Create(id)
                | Op::Unref(id)
                | Op::Attach(id)
                | Op::Detach(id)
                | Op::Transfer(id)
                | Op::Flush(id)
                | Op::Scanout(id) => id,
                Op::ScanoutOff => 0,
            };
            let want = model.step(op, &content[id as usize]);
            let got = send(&mut gpu, op, &pages[id as usize], i as u64 + 1)?;
            prop_assert_eq!(got, want, "step {} {:?} of {:?}", i, op, ops);
        }

        // The host's view equals the model's.
        let have: Vec<_> = ctl
            .resources()
            .iter()
            .map(|r| {
                (
                    r["id"].as_u64().unwrap() as u32,
                    r["backing"].as_str().unwrap().to_string(),
                    r["generation"].as_u64().unwrap(),
                    r["host_hash"].as_str().unwrap().to_string(),
                    r["scanouts"].clone(),
                )
            })
            .collect();
        let want: Vec<_> = model
            .live
            .iter()
            .map(|(&id, r)| {
                let state = if r.attached { "attached" } else { "detached" };
                let scanouts = if model.scanout == Some(id) {
                    json!([0])
                } else {
                    json!([])
                };
                (
                    id,
                    state.to_string(),
                    r.generation,
                    hash_hex(&r.host),
                    scanouts,
                )
            })
            .collect();
        prop_assert_eq!(have, want, "resources after {:?}", ops);
        let v1 = ctl.counters()["counters"]["violations"].as_u64().unwrap();
        prop_assert_eq!(v1 - v0, model.violations, "violations after {:?}", ops);
        let attaches: Vec<(u32, u64)> = events_of(&ctl.trace(seq0, None), "attach")
            .iter()
            .map(|e| {
                (
                    e["resource_id"].as_u64().unwrap() as u32,
                    e["generation"].as_u64().unwrap(),
                )
            })
            .collect();
        prop_assert_eq!(attaches, model.attaches, "attach trace after {:?}", ops);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\ndaemon log:\n{}", d.log());
    }
    d.assert_alive();
}
