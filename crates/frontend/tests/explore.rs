mod common;
use gpuswap_frontend::*;
use std::time::{Duration, Instant};

#[test]
fn explore_death() {
    let Some(mut b) = common::spawn_c_backend("explore_death") else { return };
    let mut gpu = GpuFrontend::connect(&b.socket, FrontendConfig::default()).unwrap();
    gpu.set_timeout(Duration::from_secs(20));
    let t0 = Instant::now();
    let r = gpu.submit_raw(QueueId::Control, &[RawDesc::readable(1 << 40, 24), RawDesc::writable(0x100000, 24)]);
    eprintln!("{r:?} after {:?}", t0.elapsed());
    let st = b.wait_exit(Duration::from_secs(20));
    eprintln!("{st:?} after {:?}", t0.elapsed());
    eprintln!("{}", b.log());
}
