mod common;
use gpuswap_frontend::*;
use gpuswap_protocol::{format, wire::*};
use std::time::Duration;

#[test]
fn explore2() {
    let Some(mut b) = common::spawn_c_backend("explore2") else {
        return;
    };
    let cfg = FrontendConfig {
        regions: vec![
            RegionSpec::new(0, 64 << 20),
            RegionSpec::new(64 << 20, 64 << 20),
        ],
        ..Default::default()
    };
    let mut gpu = GpuFrontend::connect(&b.socket, cfg).unwrap();
    gpu.set_timeout(Duration::from_secs(2));
    gpu.resource_create_2d(1, format::B8G8R8A8_UNORM, 16, 16)
        .unwrap();
    let r = gpu.attach_backing(
        1,
        &[MemEntry {
            addr: (64 << 20) - 4096,
            length: 8192,
            padding: 0,
        }],
    );
    eprintln!("crossing adjacent regions: {r:?}");
    let p = gpu.ram_mut().alloc(1, Placement::Contiguous).unwrap();
    let e = vec![p.entries()[0]; 16384];
    eprintln!("16384 entries: {:?}", gpu.attach_backing(1, &e));
    eprintln!("detach {:?}", gpu.detach_backing(1));
    let e = vec![p.entries()[0]; 16385];
    eprintln!("16385 entries: {:?}", gpu.attach_backing(1, &e));
    // nr_entries larger than the data present
    let body = ResourceAttachBacking {
        resource_id: 1,
        nr_entries: 3,
    };
    use vm_memory::ByteValued;
    let r = gpu.cmd().raw(
        gpuswap_protocol::ctrl_type::RESOURCE_ATTACH_BACKING,
        body.as_slice(),
        p.entries()[0].as_slice(),
        24,
    );
    eprintln!("nr_entries > data: {:?}", r.map(|(h, _)| h.type_));
    // small response buffer
    let buf = gpu.ram_mut().alloc(2, Placement::Contiguous).unwrap();
    let a = buf.addrs()[0];
    let hdr = CtrlHeader {
        type_: gpuswap_protocol::ctrl_type::GET_DISPLAY_INFO,
        ..Default::default()
    };
    gpu.ram().write(a, hdr.as_slice()).unwrap();
    let r = gpu.submit_raw(
        QueueId::Control,
        &[RawDesc::readable(a, 24), RawDesc::writable(a + 4096, 8)],
    );
    eprintln!("small resp (display info): {r:?}");
    let hdr = CtrlHeader {
        type_: gpuswap_protocol::ctrl_type::RESOURCE_UNREF,
        ..Default::default()
    };
    gpu.ram().write(a, hdr.as_slice()).unwrap();
    gpu.ram()
        .write(a + 24, &[99u8, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    let r = gpu.submit_raw(
        QueueId::Control,
        &[RawDesc::readable(a, 32), RawDesc::readable(a + 4096, 24)],
    );
    eprintln!("readonly resp: {r:?}");
    let r = gpu.submit_raw(QueueId::Control, &[RawDesc::readable(a, 32)]);
    eprintln!("no resp: {r:?}");
    // add region, attach in it
    gpu.add_region(RegionSpec::new(1 << 32, 16 << 20)).unwrap();
    let q = gpu
        .ram_mut()
        .alloc_in(1 << 32, 1, Placement::Contiguous)
        .unwrap();
    eprintln!(
        "attach in added region: {:?}",
        gpu.attach_backing(1, &q.entries())
    );
    eprintln!("detach {:?}", gpu.detach_backing(1));
    gpu.remove_region(1 << 32).unwrap();
    eprintln!(
        "attach in removed region: {:?}",
        gpu.attach_backing(1, &q.entries())
    );
    gpu.set_mem_table().unwrap();
    eprintln!(
        "after SET_MEM_TABLE: {:?}",
        gpu.resource_create_2d(5, format::B8G8R8A8_UNORM, 16, 16)
    );
    // bogus address in raw descriptor
    let r = gpu.submit_raw(
        QueueId::Control,
        &[
            RawDesc::readable(0x7_0000_0000, 24),
            RawDesc::writable(a + 4096, 24),
        ],
    );
    eprintln!("bogus addr: {r:?} running={}", b.is_running());
    eprintln!("log: {}", b.log());
}

#[test]
fn explore_headless() {
    let Some(b) = common::spawn_c_backend("explore_headless") else {
        return;
    };
    let mut gpu = GpuFrontend::connect(&b.socket, FrontendConfig::default().headless()).unwrap();
    gpu.set_timeout(Duration::from_secs(1));
    eprintln!(
        "headless create {:?}",
        gpu.resource_create_2d(1, format::B8G8R8A8_UNORM, 16, 16)
    );
    eprintln!(
        "headless set_scanout {:?}",
        gpu.set_scanout(
            0,
            1,
            Rect {
                x: 0,
                y: 0,
                width: 16,
                height: 16
            }
        )
    );
    eprintln!(
        "headless flush {:?}",
        gpu.resource_flush(
            1,
            Rect {
                x: 0,
                y: 0,
                width: 16,
                height: 16
            }
        )
    );
    eprintln!(
        "headless display info {:?}",
        gpu.get_display_info().map(|_| ())
    );
    eprintln!(
        "after {:?}",
        gpu.resource_create_2d(2, format::B8G8R8A8_UNORM, 16, 16)
    );
    eprintln!("log: {}", b.log());
}
