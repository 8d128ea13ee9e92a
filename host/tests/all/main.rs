//! memplex integration tests: one binary, a module per area, shared fixtures.
//!
//! The native plugins and fixtures are built by `cargo xtask test` (or `cargo build
//! --workspace`) before these run; a missing one fails with that hint, never skips.

mod cli;
mod contract;
mod loading;
mod pool;
mod runtime;
mod tap;
mod wasm;

use memplex::provider::{InitParams, PluginPath, ProviderPlugin};
use std::path::PathBuf;

/// The build output directory the plugins land in (`target/debug`).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// A cdylib built by the workspace, e.g. `so("memplex_plugin_slab")`.
pub fn so(lib: &str) -> PathBuf {
    let path = build_dir().join(format!("lib{lib}.so"));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins first with `cargo xtask test` (or `cargo build --workspace`)",
        path.display()
    );
    path
}

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
