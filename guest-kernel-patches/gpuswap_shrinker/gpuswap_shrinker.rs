// SPDX-License-Identifier: GPL-2.0

//! gpuswap shrinker.
//!
//! Gives idle virtio-gpu buffer objects back to the kernel under memory
//! pressure (see DESIGN.md, "Guest: eviction protocol"). For now the
//! module only loads and unloads; the shrinker registration and the
//! count/scan callbacks replace the body of [`GpuswapShrinker`].

use kernel::prelude::*;

module! {
    type: GpuswapShrinker,
    name: "gpuswap_shrinker",
    author: "gpuswap developers",
    description: "Shrinker that evicts idle virtio-gpu buffer objects",
    license: "GPL",
}

/// Module state; will own the registered `struct shrinker`.
struct GpuswapShrinker;

impl kernel::Module for GpuswapShrinker {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // `pr_info!` prefixes the module name: "gpuswap_shrinker: loaded".
        pr_info!("loaded\n");
        Ok(GpuswapShrinker)
    }
}

impl Drop for GpuswapShrinker {
    fn drop(&mut self) {
        pr_info!("unloaded\n");
    }
}
