//! Shared set-up for memplex's criterion benchmarks (`benches/benches/*.rs`).
//!
//! Run them with `cargo xtask bench`, which builds the `.so` plugins in release mode
//! first; the benchmarks load them from the build directory beside the bench binary.
#![deny(missing_docs)]

use memplex::provider::{InitParams, PluginPath, ProviderPlugin};

/// The shipped providers, by name.
pub const PROVIDERS: [&str; 3] = ["heap", "slab", "hugepage"];

/// Init params the benchmarks use: 2 KiB buffers, a pool of 1024.
pub fn params() -> InitParams {
    InitParams::new(0, 2048, 1024)
}

/// The built-in (statically linked) and native (`.so`) plugins of provider `name`.
///
/// # Panics
/// When the `.so` is not built; run `cargo xtask bench`.
pub fn both(name: &str) -> (ProviderPlugin, ProviderPlugin) {
    let builtin = ProviderPlugin::builtin(name).expect("a built-in provider");
    let native = ProviderPlugin::load(name, &PluginPath::from_env()).unwrap_or_else(|e| {
        panic!("{e}\n(run `cargo xtask bench`, which builds the plugins first)")
    });
    (builtin, native)
}
