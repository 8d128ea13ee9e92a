//! Where the workspace's build put the plugins and fixtures the tests load.

use std::path::PathBuf;

/// The build output directory the plugins land in (`target/debug`), seen from a test
/// or benchmark binary in `target/<profile>/deps/`.
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// A cdylib built by the workspace, e.g. `so("memplex_plugin_slab")`.
///
/// # Panics
/// When it is missing: the tests never skip for want of a build; they say how to make it.
pub fn so(lib: &str) -> PathBuf {
    let path = build_dir().join(format!("lib{lib}.so"));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins first with `cargo xtask test` (or `cargo build --workspace`)",
        path.display()
    );
    path
}
