//! `cargo xtask`: build orchestration for memplex. Everything a fresh machine needs is
//! set up here, so the README's commands work on a fresh clone.
//!
//! - `cargo xtask build [--release]`: every plugin, fixture and the out-of-tree example;
//! - `cargo xtask demo [ARGS]`: build (release), then `memplex demo ARGS`;
//! - `cargo xtask test`: build, then every test in the workspace and the example;
//! - `cargo xtask bench [ARGS]`: build (release), then the criterion benchmarks;
//! - `cargo xtask lint`: rustfmt and clippy with warnings as errors.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const EXAMPLE: &str = "examples/third-party-provider/Cargo.toml";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf();
    std::env::set_current_dir(&root).expect("cd to the workspace root");
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => build(&root, rest.contains(&"--release")),
        Some("demo") => build(&root, true).and_then(|()| run(Command::new(root.join("target/release/memplex")).arg("demo").args(&rest))),
        Some("test") => test(&root),
        Some("bench") => build(&root, true).and_then(|()| cargo(&["bench", "-p", "memplex-benches", "--"], &rest)),
        Some("lint") => lint(),
        _ => {
            eprintln!("usage: cargo xtask <build [--release] | demo [ARGS] | test | bench [ARGS] | lint>");
            exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        exit(1);
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn cargo(args: &[&str], rest: &[&str]) -> Result<(), String> {
    run(Command::new(env!("CARGO")).args(args).args(rest))
}

/// Builds the workspace (all plugins and fixtures) and the out-of-tree example into the
/// same target directory, so `memplex` finds them beside itself.
fn build(root: &Path, release: bool) -> Result<(), String> {
    let profile: &[&str] = if release { &["--release"] } else { &[] };
    cargo(&["build", "--workspace"], profile)?;
    let target = root.join("target");
    let target = target.to_str().ok_or("target path is not UTF-8")?;
    cargo(&["build", "--manifest-path", EXAMPLE, "--target-dir", target], profile)
}

fn test(root: &Path) -> Result<(), String> {
    build(root, false)?;
    cargo(&["test", "--workspace", "--all-targets"], &[])?;
    cargo(&["test", "--workspace", "--doc"], &[])?;
    let target: PathBuf = root.join("target");
    cargo(&["test", "--manifest-path", EXAMPLE, "--target-dir", target.to_str().ok_or("target path is not UTF-8")?], &[])
}

fn lint() -> Result<(), String> {
    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[])?;
    cargo(&["clippy", "--manifest-path", EXAMPLE, "--all-targets", "--", "-D", "warnings"], &[])
}
