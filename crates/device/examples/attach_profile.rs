//! ATTACH_BACKING + DETACH_BACKING of a large scattered backing, for
//! profiling the device model under callgrind (issue 15):
//!
//! ```text
//! cargo build --release --example attach_profile -p gpuswap-device
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     ./target/release/examples/attach_profile [CYCLES] [ENTRIES] [RAM_MIB]
//! callgrind_annotate --inclusive=yes /tmp/cg.out
//! ```
//!
//! Every request goes the daemon's way: wire bytes, `Request::decode_ctrl`,
//! `GpuDevice::process`, so decode is included. The backing is ENTRIES
//! (default 262144: 1 GiB) entries of one 4 KiB page each, at pages of a
//! RAM_MIB (default 3072, the benchmark's guest RAM) region picked by a
//! fixed pseudo-random permutation with no two pages adjacent (like the
//! benchmark's scattered layout, so no entries merge). Each of CYCLES
//! (default 4) cycles attaches and detaches it once; a function's Ir
//! divided by ENTRIES x CYCLES is its instructions per entry.
//!
//! The resource is a small 2D resource: attach does not compare a 2D
//! resource's size with its backing, and a small host copy keeps its
//! allocation out of the profile.

use std::sync::Arc;

use gpuswap_device::{DeviceConfig, GpuDevice, RutabagaRenderer};
use gpuswap_protocol::{ctrl_type as t, Request, Response};
use gpuswap_testkit::Rng;
use vm_memory::{GuestAddress, GuestMemoryMmap};

// The device tests' request builders (wire bytes, as the guest writes them).
#[path = "../tests/common/mod.rs"]
mod common;
use common::{attach, create_2d, detach, PAGE, XRGB};

const RESOURCE: u32 = 1;

/// Decodes and processes one request, as the daemon's queue handler does.
fn send(dev: &mut GpuDevice<RutabagaRenderer, GuestMemoryMmap<()>>, bytes: &[u8], max: u32) {
    let req = match Request::decode_ctrl(bytes, max) {
        Ok(req) => req,
        Err((_, e)) => panic!("decode: {e}"),
    };
    let what = t::name(req.hdr.type_);
    match dev.process(req) {
        Response::OkNoData => {}
        other => panic!("{what}: {other:?}"),
    }
}

fn main() {
    let arg = |i: usize, default: u64| -> u64 {
        std::env::args()
            .nth(i)
            .map_or(default, |a| a.parse().expect("numeric argument"))
    };
    let cycles = arg(1, 4);
    let entries = arg(2, 262_144);
    let ram = arg(3, 3072) << 20;
    // Every other page is a candidate, so no two chosen pages are adjacent.
    let candidates = ram / PAGE / 2;
    assert!(
        entries <= candidates,
        "{entries} entries need more guest RAM"
    );

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram as usize)])
        .expect("guest memory");
    let config = DeviceConfig {
        max_entries: entries as u32,
        ..Default::default()
    };
    let max = config.max_entries;
    let renderer = RutabagaRenderer::new().expect("rutabaga 2D");
    let mut dev = GpuDevice::new(config, renderer);
    dev.set_memory(Arc::new(mem));

    // A fixed permutation of the candidate pages (Fisher-Yates), first
    // `entries` of it.
    let mut pages: Vec<u64> = (0..candidates).map(|k| 2 * k * PAGE).collect();
    let mut rng = Rng::new(15);
    for i in (1..pages.len()).rev() {
        pages.swap(i, rng.below(i as u64 + 1) as usize);
    }
    pages.truncate(entries as usize);

    let backing: Vec<(u64, u32)> = pages.iter().map(|&addr| (addr, PAGE as u32)).collect();
    let attach = attach(RESOURCE, &backing);
    let detach = detach(RESOURCE);
    send(&mut dev, &create_2d(RESOURCE, XRGB, 64, 64), max);
    for _ in 0..cycles {
        send(&mut dev, &attach, max);
        send(&mut dev, &detach, max);
    }
    dev.check_consistency().expect("device bookkeeping");
    println!(
        "{cycles} cycles of ATTACH + DETACH of {entries} scattered 4 KiB entries in {} MiB",
        ram >> 20
    );
}
