//! memplex integration tests: one binary, a module per area, shared fixtures.
//!
//! The native plugins and fixtures are built by `cargo xtask test` (or `cargo build
//! --workspace`) before these run; a missing one fails with that hint, never skips.

mod contract;
mod export;
mod faults;
mod loading;
mod pool;
mod runtime;
mod tap;
mod wasm;

use memplex::provider::{InitParams, PluginPath, ProviderPlugin};
pub use memplex_testkit::fixtures::{build_dir, so};

/// The faulty fixture, loaded.
pub fn faulty() -> ProviderPlugin {
    ProviderPlugin::open(&so("memplex_fixture_faulty")).expect("faulty fixture loads")
}

/// Init params for queue 0 with 2 KiB buffers and the given settings.
pub fn params(settings: &[(&str, &str)]) -> InitParams {
    settings
        .iter()
        .fold(InitParams::new(0, 2048, 256), |p, (k, v)| p.set(k, v))
}

/// The plugin path a default `memplex` would use from this test binary.
pub fn plugin_path() -> PluginPath {
    PluginPath::from_env()
}
