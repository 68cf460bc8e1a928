//! gpuswap guest tool: drives virtio-gpu through the DRM UAPI inside the guest
//! and answers the host harness over a virtio-serial agent channel.
//!
//! The library part is usable on the host too: [`pattern`] (content generator
//! and hash) and [`proto`] (the agent's wire format) have no device dependency.

pub mod agent;
pub mod anon;
pub mod devnode;
pub mod drm;
pub mod error;
pub mod gpu;
pub mod hog;
pub mod kms;
pub mod ktrace;
pub mod pattern;
pub mod proto;
pub mod reclaim_bench;
pub mod shrink;
pub mod shrinker;
pub mod sysinfo;
pub mod touch;
#[allow(non_camel_case_types)]
pub mod uapi;
pub mod virtgpu;

pub use error::{Error, Result};
