//! gpuswap-daemon's parts, as a library so that fuzz targets and
//! in-process tests reach the queue handler and the control protocol
//! without a process boundary. The program itself is `main.rs`.

pub mod alloc;
pub mod backend;
pub mod config;
pub mod control;
pub mod poll;
pub mod relay;
pub mod seccomp;
pub mod socket_display;
