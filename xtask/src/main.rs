//! `cargo xtask`: build orchestration for memplex. Everything a fresh machine needs is
//! set up here, so the README's commands work on a fresh clone.
//!
//! - `cargo xtask build [--release]`: every plugin, fixture and the out-of-tree example;
//! - `cargo xtask demo [ARGS]`: build (release), then `memplex demo ARGS`;
//! - `cargo xtask test`: build, then every test in the workspace and the example;
//! - `cargo xtask bench [ARGS]`: build (release), then the criterion benchmarks;
//! - `cargo xtask targets [--criterion] [--repeats N] [--seconds S]`: every benchmark
//!   target of the open issues measured on this CPU, each with whether it holds;
//! - `cargo xtask lint`: rustfmt and clippy with warnings as errors;
//! - `cargo xtask soak [SECONDS]`: a long run (default 600 s) of `configs/wasm.toml` on
//!   a capture replayed without end, a WASM and a native provider, every frame verified;
//!   RSS sampled every second; fails on growth past 1 MiB after the first minute, a leak
//!   or a drop. Not part of `test` (CI has no ten minutes to spare);
//! - `cargo xtask fuzz [TARGET] [SECONDS]`: a fuzz target (`split`, the default,
//!   `config`, `wasm_boundary` or `hostile_consumer`) on nightly (installs cargo-fuzz if
//!   missing), seeded from `fuzz/seeds/TARGET`;
//! - `cargo xtask instructions [WORKLOAD...] [--asm FUNCTION]`: the worker's (or a
//!   consumer's) instructions a frame under callgrind, by source line and function, and
//!   with `--asm` each instruction of one function;
//! - `cargo xtask ab REV [--pairs N] BENCH_ARGS...`: `memplex bench` from another
//!   revision and from the working tree, alternately, with the ratio of each row.

mod targets;

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const EXAMPLE: &str = "examples/third-party-provider/Cargo.toml";
/// A provider built against the previous ABI, with its frozen copy of memplex-abi 0.1.0.
const PREVIOUS_ABI: &str = "plugins/fixtures/abi-0.1.0/Cargo.toml";
/// A plugin built against ABI 0.1.1 (a frozen copy), before gathered fill.
const ABI_0_1_1: &str = "plugins/fixtures/abi-0.1.1/Cargo.toml";
const WASM: &str = "wasm-plugins/Cargo.toml";
const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// WASM providers: (crate's artifact, name it gets beside the memplex binary).
const WASM_PROVIDERS: [(&str, &str); 2] =
    [("memplex_wasm_slab", "slab"), ("memplex_wasm_ring", "ring")];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf();
    std::env::set_current_dir(&root).expect("cd to the workspace root");
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => build(
            &root,
            if rest.contains(&"--release") {
                "release"
            } else {
                "dev"
            },
        ),
        Some("demo") => setup()
            .and_then(|()| build(&root, "release"))
            .and_then(|()| {
                run(Command::new(root.join("target/release/memplex"))
                    .arg("demo")
                    .args(&rest))
            }),
        Some("test") => test(&root),
        Some("bench") => build(&root, "bench")
            .and_then(|()| criterion(&root, &rest))
            .and_then(|()| summary(&root).map(drop)),
        Some("targets") => build(&root, "release").and_then(|()| targets::targets(&root, &rest)),
        Some("lint") => lint(&root),
        Some("fuzz") => fuzz(&root, &rest),
        Some("soak") => build(&root, "release").and_then(|()| soak(&root, &rest)),
        Some("instructions") => instructions(&root, &rest),
        Some("ab") => ab(&root, &rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <build [--release] | demo [ARGS] | test | bench [ARGS] | targets [--criterion] | lint | soak [SECONDS] | fuzz [TARGET] [SECONDS] | instructions [WORKLOAD...] [--asm FUNCTION] | ab REV [--pairs N] BENCH_ARGS...>"
            );
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
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))?;
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
///
/// `profile` is a cargo profile: `dev`, `release`, or `bench` (which writes to
/// `target/release` too, with the bench profile's LTO, so plugins and benchmark binaries
/// are optimised alike and a built-in vs `.so` comparison is fair).
fn build(root: &Path, profile: &str) -> Result<(), String> {
    let args: &[&str] = &["--profile", profile];
    cargo(&["build", "--workspace"], args)?;
    // The misbehaving consumer the delivery defence tests run.
    cargo(&["build", "-p", "memplex-consumer", "--examples"], args)?;
    let target = root.join("target");
    let target_dir = target.to_str().ok_or("target path is not UTF-8")?;
    for manifest in [EXAMPLE, PREVIOUS_ABI, ABI_0_1_1] {
        cargo(
            &[
                "build",
                "--manifest-path",
                manifest,
                "--target-dir",
                target_dir,
            ],
            args,
        )?;
    }
    build_wasm(&target, if profile == "dev" { "debug" } else { "release" })
}

/// Builds the WASM providers (adding the wasm32 target when it is missing) and puts them
/// beside the memplex binary in `target/<dir>` as `NAME.wasm`, where configs find them.
fn build_wasm(target: &Path, dir: &str) -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if !installed.is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == WASM_TARGET)
    }) {
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    let target_dir = target.to_str().ok_or("target path is not UTF-8")?;
    cargo(
        &[
            "build",
            "--manifest-path",
            WASM,
            "--release",
            "--target",
            WASM_TARGET,
            "--target-dir",
            target_dir,
        ],
        &[],
    )?;
    let out = target.join(dir);
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    for (artifact, name) in WASM_PROVIDERS {
        let from = target
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{artifact}.wasm"));
        let to = out.join(format!("{name}.wasm"));
        std::fs::copy(&from, &to)
            .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))?;
    }
    Ok(())
}

/// The system tools the tests and the demo use, by the Debian package that has them:
/// (command, how to ask it for its version, package).
const TOOLS: [(&str, &str, &str); 7] = [
    ("ip", "-V", "iproute2"),
    ("tc", "-V", "iproute2"),
    // Reads the pcap sink's output back, as a user's capture tools would.
    ("tcpdump", "--version", "tcpdump"),
    // Builds the C example consumer (consumer/examples/c), which a test runs.
    ("cc", "--version", "gcc"),
    // Real TCP and UDP, and pings, through memplex forwarding (`demo --forward`, tests).
    ("iperf3", "--version", "iperf3"),
    ("ping", "-V", "iputils-ping"),
    // Turns a veth's offloads off for the AF_PACKET forwarding demo and test.
    ("ethtool", "--version", "ethtool"),
];

/// Installs the tools of [`TOOLS`] that are missing, with apt as root. Without root
/// nothing is installed and the tests that need a tool say so (or skip outside CI).
fn setup() -> Result<(), String> {
    let have = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(cmd, arg, _)| !have(cmd, arg))
        .map(|(_, _, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    // `id -u` rather than geteuid(), to keep xtask free of libc and unsafe.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !root {
        eprintln!(
            "xtask: {} missing and this is not root; the tests that need them will skip or fail",
            missing.join(", ")
        );
        return Ok(());
    }
    eprintln!(
        "xtask: installing {} for the tests and the demo",
        missing.join(", ")
    );
    apt_install(&missing)
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn test(root: &Path) -> Result<(), String> {
    setup()?;
    build(root, "dev")?;
    cargo(&["test", "--workspace", "--all-targets"], &[])?;
    cargo(&["test", "--workspace", "--doc"], &[])?;
    let target: PathBuf = root.join("target");
    let target_dir = target.to_str().ok_or("target path is not UTF-8")?;
    cargo(
        &[
            "test",
            "--manifest-path",
            EXAMPLE,
            "--target-dir",
            target_dir,
        ],
        &[],
    )?;
    // The guest crates' logic, natively (the providers themselves are cdylibs for wasm32).
    cargo(
        &[
            "test",
            "--manifest-path",
            WASM,
            "-p",
            "memplex-wasm-abi",
            "-p",
            "memplex-guest",
            "--target-dir",
            target_dir,
        ],
        &[],
    )
}

/// Installs a rustup component when its cargo subcommand is missing.
fn ensure_component(subcommand: &str, component: &str) -> Result<(), String> {
    let present = Command::new(env!("CARGO"))
        .args([subcommand, "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", component]))
}

fn lint(root: &Path) -> Result<(), String> {
    ensure_component("fmt", "rustfmt")?;
    ensure_component("clippy", "clippy")?;
    let target = root.join("target");
    let target = target.to_str().ok_or("target path is not UTF-8")?;
    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(&["fmt", "--manifest-path", EXAMPLE, "--check"], &[])?;
    cargo(&["fmt", "--manifest-path", WASM, "--all", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // The fuzz targets' entry points (not in the workspace's builds).
    cargo(
        &[
            "clippy",
            "-p",
            "memplex",
            "--features",
            "fuzzing",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(
        &[
            "clippy",
            "--manifest-path",
            EXAMPLE,
            "--target-dir",
            target,
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    build_wasm(&root.join("target"), "debug")?;
    cargo(
        &[
            "clippy",
            "--manifest-path",
            WASM,
            "--workspace",
            "--target",
            WASM_TARGET,
            "--target-dir",
            target,
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )
}

/// The median of one criterion benchmark, in ns per iteration, from its estimates file.
fn median(root: &Path, id: &str) -> Option<f64> {
    let path = root
        .join("target/criterion")
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// The ratio a bench measured in alternating blocks (`memplex_benches::interleaved`),
/// with how many rounds it took; `id` as the bench named it.
fn paired(root: &Path, id: &str) -> Option<(f64, u64)> {
    let path = root
        .join("target/criterion/paired")
        .join(format!("{}.json", id.replace('/', "_")));
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((json["ratio"].as_f64()?, json["rounds"].as_u64()?))
}

/// A ratio cell: the interleaved one (`paired` under `id`) where the bench measured it,
/// else the ratio of criterion's two medians.
fn ratio_cell(root: &Path, id: &str, of_medians: f64, unit: &str) -> String {
    match paired(root, id) {
        Some((r, rounds)) => format!("{r:.2}x {unit} (interleaved, median of {rounds})"),
        None => format!("{of_medians:.2}x {unit}"),
    }
}

/// The criterion benchmarks (ARGS after `--`), with the CPU they measure recorded for
/// `cargo xtask targets`.
fn criterion(root: &Path, rest: &[&str]) -> Result<(), String> {
    let cpu = root.join(targets::CRITERION_CPU);
    // Whatever the last run left is not this run's until this run is over.
    let _ = std::fs::remove_file(&cpu);
    cargo(
        &[
            "bench",
            "-p",
            "memplex-benches",
            "--bench",
            "pool",
            "--bench",
            "providers",
            "--bench",
            "split",
            "--bench",
            "place",
            "--",
        ],
        rest,
    )?;
    std::fs::write(&cpu, targets::cpu() + "\n")
        .map_err(|e| format!("writing {}: {e}", cpu.display()))
}

/// A target an issue sets for a ratio, and what a run measured.
pub(crate) struct Verdict {
    what: String,
    measured: f64,
    /// The bound, and whether the ratio must stay under it (else reach it).
    bound: f64,
    at_most: bool,
}

impl Verdict {
    pub(crate) fn at_most(what: impl Into<String>, measured: f64, bound: f64) -> Self {
        Verdict {
            what: what.into(),
            measured,
            bound,
            at_most: true,
        }
    }

    pub(crate) fn at_least(what: impl Into<String>, measured: f64, bound: f64) -> Self {
        Verdict {
            what: what.into(),
            measured,
            bound,
            at_most: false,
        }
    }

    /// Whether the target holds (a measurement that is not a number does not).
    pub(crate) fn met(&self) -> bool {
        if self.at_most {
            self.measured <= self.bound
        } else {
            self.measured >= self.bound
        }
    }

    /// A Markdown table row.
    pub(crate) fn row(&self) -> String {
        format!(
            "| {} | {:.3} | {} {} | {} |",
            self.what,
            self.measured,
            if self.at_most { "<=" } else { ">=" },
            self.bound,
            if self.met() { "yes" } else { "**no**" }
        )
    }
}

/// The ratio [`ratio_cell`] shows: the interleaved one where the bench measured it, else
/// the ratio of the medians.
fn ratio_value(root: &Path, id: &str, of_medians: f64) -> f64 {
    paired(root, id).map_or(of_medians, |(r, _)| r)
}

/// Prints the same-run ratios the issues set targets for, from criterion's medians, or
/// where a bench also measured a pair in alternating blocks, from that; the targets,
/// with what was measured against each.
fn summary(root: &Path) -> Result<Vec<Verdict>, String> {
    let mut verdicts = Vec::new();
    let mut lines = vec![
        "| measurement | median | ratio | target |".to_string(),
        "|---|---|---|---|".to_string(),
    ];
    let atomic = median(root, "pool_fast_path/atomic_fetch_add");
    let single = median(root, "pool_fast_path/alloc_recycle");
    let burst = median(root, "pool_fast_path/alloc_recycle_burst32").map(|m| m / 32.0);
    let bulk = median(root, "pool_fast_path/alloc_recycle_burst32_bulk").map(|m| m / 32.0);
    if let Some(a) = atomic {
        lines.push(format!(
            "| atomic fetch_add (uncontended) | {a:.2} ns | 1.00x | baseline |"
        ));
        if let Some(s) = single {
            let r = ratio_cell(
                root,
                "pool_fast_path/alloc_recycle_over_atomic",
                s / a,
                "atomic",
            );
            lines.push(format!(
                "| pool alloc+recycle, one buffer, barrier between | {s:.2} ns | {r} | <= 1.0x |"
            ));
            verdicts.push(Verdict::at_most(
                "13: pool alloc+recycle of one buffer / an atomic add (criterion)",
                ratio_value(root, "pool_fast_path/alloc_recycle_over_atomic", s / a),
                1.0,
            ));
        }
        if let Some(b) = burst {
            lines.push(format!("| pool alloc+recycle, burst of 32 one by one, per buffer | {b:.2} ns | {:.2}x atomic | - |", b / a));
        }
        if let Some(b) = bulk {
            let r = ratio_cell(
                root,
                "pool_fast_path/burst32_per_buffer_over_atomic",
                b / a,
                "atomic",
            );
            lines.push(format!(
                "| pool alloc_burst+recycle_burst of 32, per buffer | {b:.2} ns | {r} | <= 0.3x |"
            ));
            verdicts.push(Verdict::at_most(
                "13: pool in bursts of 32, per buffer / an atomic add (criterion)",
                ratio_value(root, "pool_fast_path/burst32_per_buffer_over_atomic", b / a),
                0.3,
            ));
        }
    }
    for name in ["heap", "slab", "hugepage", "shm"] {
        let per = |v: &str| median(root, &format!("bulk64_{name}/{v}")).map(|m| m / 64.0);
        if let (Some(b), Some(so)) = (per("builtin"), per("so")) {
            lines.push(format!("| {name}: alloc_bulk+release_bulk(64), per buffer, built-in | {b:.2} ns | 1.00x | baseline |"));
            let r = ratio_cell(
                root,
                &format!("bulk64/{name}/so_over_builtin"),
                so / b,
                "built-in",
            );
            lines.push(format!(
                "| {name}: same, loaded as .so | {so:.2} ns | {r} | <= 1.1x |"
            ));
            verdicts.push(Verdict::at_most(
                format!("13: {name} bulk of 64 as .so / built in (criterion)"),
                ratio_value(root, &format!("bulk64/{name}/so_over_builtin"), so / b),
                1.1,
            ));
            if let Some(c) = per("so_checked") {
                lines.push(format!("| {name}: .so behind the host's descriptor checks | {c:.2} ns | {:.2}x built-in | (cost of checks) |", c / b));
            }
        }
    }
    let per = |v: &str| median(root, &format!("wasm_vs_native/{v}")).map(|m| m / 64.0);
    if let (Some(so), Some(w)) = (per("so"), per("wasm")) {
        lines.push(format!("| slab alloc_bulk+release_bulk(64), per buffer, native .so | {so:.2} ns | 1.00x | baseline |"));
        let r = ratio_cell(root, "wasm_vs_native/wasm_over_so", w / so, ".so");
        lines.push(format!(
            "| slab.wasm, same strategy, sandboxed | {w:.2} ns | {r} | <= 2x |"
        ));
        verdicts.push(Verdict::at_most(
            "13: slab.wasm bulk of 64 / slab.so (criterion)",
            ratio_value(root, "wasm_vs_native/wasm_over_so", w / so),
            2.0,
        ));
        if let Some(floor) = median(root, "wasm_vs_native/bare_typed_call_x2") {
            lines.push(format!("| floor: two bare wasmtime typed calls, per 64 buffers | {:.2} ns | {:.2}x .so | (floor) |", floor / 64.0, floor / 64.0 / so));
        }
    }
    if let Some(r) = per("ring_wasm") {
        lines.push(format!(
            "| ring.wasm (FIFO), same bulk round, sandboxed | {r:.2} ns | - | (no native ring to compare) |"
        ));
    }
    for kind in [
        "udp_64",
        "tcp_opts_1500",
        "ipv6_udp_512",
        "ipv6_ext",
        "vlan_tcp_1500",
        "vxlan",
    ] {
        let m = median(root, &format!("split_{kind}/memplex"));
        let e = median(root, &format!("split_{kind}/etherparse"));
        if let (Some(m), Some(e)) = (m, e) {
            let r = ratio_cell(
                root,
                &format!("split/{kind}/memplex_over_etherparse"),
                m / e,
                "etherparse",
            );
            lines.push(format!(
                "| header-split decision, {kind}: memplex / etherparse slicing | {m:.2} / {e:.2} ns | {r} | <= 1.0x |"
            ));
            verdicts.push(Verdict::at_most(
                format!("split decision, {kind} / etherparse (criterion)"),
                ratio_value(
                    root,
                    &format!("split/{kind}/memplex_over_etherparse"),
                    m / e,
                ),
                1.0,
            ));
        }
    }
    for size in ["128", "1500", "65535"] {
        let m = median(root, &format!("place_{size}/memplex"));
        let c = median(root, &format!("place_{size}/memcpy"));
        let target = match size {
            "128" => ">= 0.35x",
            "1500" => ">= 0.8x",
            _ => "-",
        };
        if let (Some(m), Some(c)) = (m, c) {
            let r = ratio_cell(
                root,
                &format!("place/{size}/memplex_over_memcpy_throughput"),
                c / m,
                "memcpy throughput",
            );
            lines.push(format!(
                "| placing {size} B frames (split + pools + copy) / plain memcpy, per frame | {m:.1} / {c:.1} ns | {r} | {target} |"
            ));
            let least = match size {
                "128" => Some(0.35),
                "1500" => Some(0.8),
                _ => None,
            };
            if let Some(least) = least {
                verdicts.push(Verdict::at_least(
                    format!("13: placing {size} B frames / memcpy throughput (criterion)"),
                    ratio_value(
                        root,
                        &format!("place/{size}/memplex_over_memcpy_throughput"),
                        c / m,
                    ),
                    least,
                ));
            }
        }
        let b = median(root, &format!("place_{size}/bare"));
        if let (Some(b), Some(c)) = (b, c) {
            let r = ratio_cell(
                root,
                &format!("place/{size}/bare_over_memcpy_throughput"),
                c / b,
                "memcpy throughput",
            );
            lines.push(format!(
                "| the least work for the same {size} B frames (`bare`, no device) / plain memcpy | {b:.1} / {c:.1} ns | {r} | (for scale) |"
            ));
        }
    }
    let table = lines.join("\n");
    println!("\nmemplex benchmark summary (medians from this run):\n{table}");
    let out = root.join("target/criterion/memplex-summary.md");
    std::fs::write(&out, table + "\n").map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("\n(also written to {})", out.display());
    Ok(verdicts)
}

/// The fuzz targets, each with its seed corpus in `fuzz/seeds/TARGET`.
const FUZZ_TARGETS: [&str; 4] = ["split", "config", "wasm_boundary", "hostile_consumer"];

/// `cargo xtask fuzz [TARGET] [SECONDS]`: one target (default `split`) for SECONDS
/// (default 60), on nightly, installing cargo-fuzz when missing.
fn fuzz(root: &Path, args: &[&str]) -> Result<(), String> {
    let (target, seconds) = match args {
        [] => ("split", "60"),
        [s] if s.parse::<u64>().is_ok() => ("split", *s),
        [t] => (*t, "60"),
        [t, s, ..] => (*t, *s),
    };
    if !FUZZ_TARGETS.contains(&target) {
        return Err(format!(
            "unknown fuzz target `{target}`; targets: {}",
            FUZZ_TARGETS.join(", ")
        ));
    }
    if seconds.parse::<u64>().map_or(true, |s| s == 0) {
        return Err(format!(
            "`{seconds}` is not a number of seconds (1 or more)"
        ));
    }
    let present = Command::new(env!("CARGO"))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        cargo(&["install", "cargo-fuzz", "--locked"], &[])?;
    }
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).map_err(|e| format!("creating {}: {e}", corpus.display()))?;
    run(Command::new("cargo")
        .current_dir(root.join("fuzz"))
        .args(["+nightly", "fuzz", "run", target])
        .arg(format!("corpus/{target}"))
        .arg(format!("seeds/{target}"))
        .arg("--")
        .arg(format!("-max_total_time={seconds}")))
}

/// A process's resident set, in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `cargo xtask soak [SECONDS]`; see the crate docs.
fn soak(root: &Path, args: &[&str]) -> Result<(), String> {
    let seconds: u64 = match args.first() {
        None => 600,
        Some(s) => s
            .parse()
            .ok()
            .filter(|&s| (60..=86_400).contains(&s))
            .ok_or_else(|| format!("`{s}` is not a number of seconds from 60 to 86400"))?,
    };
    let out_dir = root.join("target/soak");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    let report = out_dir.join("run.jsonl");
    let log = std::fs::File::create(&report)
        .map_err(|e| format!("creating {}: {e}", report.display()))?;
    let mut child = Command::new(root.join("target/release/memplex"))
        .args(["run", "-c", "configs/wasm.toml", "--json", "--duration"])
        .arg(seconds.to_string())
        .env("MEMPLEX_DEVICE__REPEAT", u32::MAX.to_string())
        .env("MEMPLEX_RUNTIME__STATS_INTERVAL", "10")
        .stdout(log)
        .spawn()
        .map_err(|e| format!("starting memplex: {e}"))?;
    eprintln!("xtask: soak of {seconds} s: configs/wasm.toml, the capture replayed without end, RSS sampled every second");
    let start = std::time::Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        let t = start.elapsed().as_secs();
        if let Some(kib) = rss_kib(child.id()) {
            if samples.last().is_none_or(|&(last, _)| last < t) {
                samples.push((t, kib));
                if t.is_multiple_of(30) {
                    eprintln!("  {t:>5} s: RSS {:.1} MiB", kib as f64 / 1024.0);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let csv = out_dir.join("rss.csv");
    let text: String = std::iter::once("seconds,rss_kib\n".to_string())
        .chain(samples.iter().map(|(t, k)| format!("{t},{k}\n")))
        .collect();
    std::fs::write(&csv, text).map_err(|e| format!("writing {}: {e}", csv.display()))?;
    let last_line = std::fs::read_to_string(&report)
        .map_err(|e| e.to_string())?
        .lines()
        .last()
        .map(str::to_string)
        .unwrap_or_default();
    let last: serde_json::Value = serde_json::from_str(&last_line).map_err(|e| {
        format!(
            "the run printed no final report ({e}); see {}",
            report.display()
        )
    })?;
    let total = &last["total"];
    let leaked: u64 = last["pools"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p["leaked"].as_u64()).sum())
        .unwrap_or(0);
    let dropped: u64 = total["dropped"]
        .as_object()
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    let frames = total["received"]["frames"].as_u64().unwrap_or(0);
    let verified = total["sink"]["verified"].as_u64().unwrap_or(0);
    let at = |t: u64| {
        samples
            .iter()
            .find(|(s, _)| *s >= t)
            .or(samples.last())
            .map_or(0, |(_, k)| *k)
    };
    let (minute, end) = (at(60), samples.last().map_or(0, |(_, k)| *k));
    let peak = samples.iter().map(|(_, k)| *k).max().unwrap_or(0);
    let growth = end as i64 - minute as i64;
    println!(
        "soak: {seconds} s, {frames} frames, {verified} verified, {dropped} dropped, {leaked} leaked;\n\
         RSS at 1 min {:.2} MiB, at the end {:.2} MiB ({:+.2} MiB), peak {:.2} MiB; curve in {}",
        minute as f64 / 1024.0,
        end as f64 / 1024.0,
        growth as f64 / 1024.0,
        peak as f64 / 1024.0,
        csv.display()
    );
    if !status.success() || leaked > 0 || dropped > 0 || verified != frames || growth > 1024 {
        return Err(format!(
            "the soak failed: exit {status}, {leaked} leaked, {dropped} dropped, {} not verified, RSS growth {growth} KiB after the first minute (at most 1024)",
            frames - verified.min(frames)
        ));
    }
    Ok(())
}

/// The workloads of `host/src/runtime/one_core.rs` (`WORKLOADS` there), in its order.
const WORKLOADS: [&str; 7] = [
    "count-64",
    "deliver-64",
    "count-1500",
    "deliver-1500",
    "tcp-split-128",
    "tcp-split-1500",
    "demo-mix",
];

/// Counts the instructions the worker executes per frame, exactly: each workload of the
/// one-core test runs under callgrind, which counts only inside `measured_burst` (one
/// burst handled, consumers' returns taken back). Prints the count per frame and the
/// source files and functions that execute the most, per frame (a function with all
/// that was inlined into it); the callgrind files stay in `target/instructions/` for
/// `callgrind_annotate`.
fn instructions(root: &Path, args: &[&str]) -> Result<(), String> {
    // `--asm FUNCTION`: also each instruction of that function, with its count a frame.
    let (names, asm) = match args.iter().position(|a| *a == "--asm") {
        Some(at) => {
            let function = args.get(at + 1).copied().ok_or(
                "--asm needs a function: the last part of its path, e.g. `--asm place_vector`",
            )?;
            let mut names = args[..at].to_vec();
            names.extend_from_slice(&args[at + 2..]);
            (names, Some(function))
        }
        None => (args.to_vec(), None),
    };
    let names = names.as_slice();
    if let Some(bad) = names
        .iter()
        .find(|n| !WORKLOADS.contains(n) && !CONSUMER_WORKLOADS.contains(n))
    {
        return Err(format!(
            "no workload {bad}: the workloads are {} (the worker's) and {} (the consumer's)",
            WORKLOADS.join(", "),
            CONSUMER_WORKLOADS.join(", ")
        ));
    }
    let have = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        if !root {
            return Err(
                "valgrind is missing and this is not root: install the `valgrind` package".into(),
            );
        }
        eprintln!("xtask: installing valgrind (callgrind counts the instructions)");
        apt_install(&["valgrind"])?;
    }
    let test_binary = release_lib_test(root)?;
    // Found before anything runs, so a wrong name costs no callgrind run.
    let asm_range = asm
        .map(|function| find_function(&test_binary, function))
        .transpose()?;
    let out_dir = root.join("target/instructions");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot make {}: {e}", out_dir.display()))?;
    let chosen: Vec<&str> = if names.is_empty() {
        WORKLOADS
            .iter()
            .chain(&CONSUMER_WORKLOADS)
            .copied()
            .collect()
    } else {
        names.to_vec()
    };
    let mut table = Vec::new();
    for name in chosen {
        if let Some(mode) = name.strip_prefix("consume-") {
            table.push((name, consumer_instructions(root, &out_dir, mode)?));
            continue;
        }
        let out = out_dir.join(format!("{name}.callgrind"));
        eprintln!("xtask: counting {name} under callgrind");
        let run = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg("--toggle-collect=*measured_burst*")
            // Costs per instruction too, for `--asm`; callgrind_annotate reads either.
            .arg("--dump-instr=yes")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(&test_binary)
            .args([
                "runtime::one_core::workloads",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MEMPLEX_WORKLOAD", name)
            .output()
            .map_err(|e| format!("could not start valgrind: {e}"))?;
        let stdout = String::from_utf8_lossy(&run.stdout);
        if !run.status.success() {
            return Err(format!(
                "{name} failed under callgrind ({}):\n{stdout}\n{}",
                run.status,
                String::from_utf8_lossy(&run.stderr)
            ));
        }
        let frames: u64 = stdout
            .split("frames ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{name}: no frame count in the test's output:\n{stdout}"))?;
        let total = callgrind_total(&out)?;
        let per_frame = total as f64 / frames as f64;
        println!("\n{name}: {per_frame:.0} instructions a frame ({frames} frames)");
        // The source lines that execute the most (callgrind_annotate, self cost).
        let annotate = Command::new("callgrind_annotate")
            .args(["--auto=no", "--threshold=100"])
            .arg(&out)
            .output()
            .map_err(|e| format!("could not start callgrind_annotate: {e}"))?;
        let lines = String::from_utf8_lossy(&annotate.stdout);
        // `file:function` entries, the file being where inlined code came from.
        let entries: Vec<(u64, String)> = lines
            .lines()
            .filter_map(|l| {
                let (n, rest) = l.trim_start().split_once(' ')?;
                let n: u64 = n.replace(',', "").parse().ok()?;
                let place = rest.trim_start().split_once(')').map_or(rest, |(_, p)| p);
                let place = place.split(" [").next().unwrap_or(place).trim();
                Some((n, place.to_string()))
            })
            .filter(|(_, p)| !p.is_empty() && !p.starts_with("PROGRAM"))
            .collect();
        for (count, place) in entries.iter().take(12) {
            let short = place
                .rsplit_once("/src/")
                .map_or(place.as_str(), |(_, s)| s);
            println!("  {:7.1}  {short}", *count as f64 / frames as f64);
        }
        // The same per function, everything inlined into it included: where a change
        // moved the count.
        let mut by_function: Vec<(u64, &str)> = Vec::new();
        for (count, place) in &entries {
            let function = place.split_once(':').map_or(place.as_str(), |(_, f)| f);
            match by_function.iter_mut().find(|(_, f)| *f == function) {
                Some((n, _)) => *n += count,
                None => by_function.push((*count, function)),
            }
        }
        by_function.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        println!("  by function (its own code and what was inlined into it):");
        for (count, function) in by_function.iter().take(8) {
            println!("  {:7.1}  {function}", *count as f64 / frames as f64);
        }
        if let (Some(function), Some((full, lo, hi))) = (asm, &asm_range) {
            let listing = out_dir.join(format!("{name}.{function}.asm"));
            let (executed, lines) =
                annotate_function(&out, &test_binary, (full, *lo, *hi), frames, &listing)?;
            println!(
                "  {function}: {executed:.1} a frame in its own code (inlined code included), {lines} instructions executed; each with its count a frame in {}",
                listing.display()
            );
        }
        table.push((name, per_frame));
    }
    println!(
        "\ninstructions a frame (exact; the worker's work per burst, consumers' returns included; a consumer's reading and giving back)"
    );
    for (name, n) in table {
        println!("  {name:<16} {n:>8.0}");
    }
    Ok(())
}

/// The function of `binary` whose path ends in `::function` (or is `function`): its
/// demangled name and its addresses, to the next symbol. An error names the candidates
/// when there is not exactly one.
fn find_function(binary: &Path, function: &str) -> Result<(String, u64, u64), String> {
    let symbols = Command::new("nm")
        .args(["-C", "-n", "--defined-only"])
        .arg(binary)
        .output()
        .map_err(|e| format!("could not start nm (binutils): {e}"))?;
    let symbols = String::from_utf8_lossy(&symbols.stdout);
    let parsed: Vec<(u64, &str)> = symbols
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ' ');
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let kind = f.next()?;
            let name = f.next()?;
            matches!(kind, "t" | "T").then_some((addr, name))
        })
        .collect();
    let suffix = format!("::{function}");
    let matches: Vec<usize> = (0..parsed.len())
        .filter(|&i| parsed[i].1 == function || parsed[i].1.ends_with(&suffix))
        .collect();
    let at = match matches.as_slice() {
        [one] => *one,
        [] => {
            return Err(format!(
                "--asm: no function {function} in {} (inlined everywhere, or misspelt?)",
                binary.display()
            ))
        }
        many => {
            let names: Vec<&str> = many.iter().map(|&i| parsed[i].1).collect();
            return Err(format!(
                "--asm: {} functions end in {function}: {}; name more of the path",
                many.len(),
                names.join(", ")
            ));
        }
    };
    let lo = parsed[at].0;
    let hi = parsed[at + 1..]
        .iter()
        .map(|(a, _)| *a)
        .find(|&a| a > lo)
        .unwrap_or(u64::MAX);
    Ok((parsed[at].1.to_string(), lo, hi))
}

/// Writes to `listing` the disassembly of `binary` from `lo` to `hi` (one function,
/// `name`), each instruction with the times a frame callgrind saw it execute (`out`
/// was recorded with `--dump-instr=yes`), source lines between. Returns the
/// instructions a frame in the function, and how many of its instructions ran at all.
///
/// callgrind_annotate gives costs per source line; after inlining, one line stands for
/// many places, and what is a bounds check, a spill or a copy shows only per
/// instruction (kcachegrind has that view, but needs a display).
fn annotate_function(
    out: &Path,
    binary: &Path,
    (name, lo, hi): (&str, u64, u64),
    frames: u64,
    listing: &Path,
) -> Result<(f64, usize), String> {
    let counts = per_instruction(out, lo, hi)?;
    let disassembly = Command::new("objdump")
        .args(["-d", "-l", "-C", "--no-show-raw-insn"])
        .arg(format!("--start-address={lo:#x}"))
        .arg(format!("--stop-address={hi:#x}"))
        .arg(binary)
        .output()
        .map_err(|e| format!("could not start objdump (binutils): {e}"))?;
    let mut text = format!(
        "# {name} in {}: times a frame each instruction ran ({frames} frames), source lines between\n",
        binary.display()
    );
    let (mut sum, mut ran) = (0u64, 0usize);
    for line in String::from_utf8_lossy(&disassembly.stdout).lines() {
        let addr = line
            .trim_start()
            .split_once(':')
            .and_then(|(a, _)| u64::from_str_radix(a, 16).ok());
        match addr.filter(|_| line.starts_with(' ')) {
            Some(addr) => {
                let n = counts.get(&addr).copied().unwrap_or(0);
                sum += n;
                ran += usize::from(n > 0);
                text += &format!("{:8.2} {line}\n", n as f64 / frames as f64);
            }
            None => text += &format!("         {line}\n"),
        }
    }
    std::fs::write(listing, text)
        .map_err(|e| format!("cannot write {}: {e}", listing.display()))?;
    Ok((sum as f64 / frames as f64, ran))
}

/// Instructions executed per address in `lo..hi`, from a callgrind file recorded with
/// `--dump-instr=yes` (positions `instr line`, each absolute, `+n`/`-n` from the last,
/// or `*` for the same). A call's line after `calls=` is the callee's inclusive cost,
/// not the caller's own, and is left out.
fn per_instruction(
    out: &Path,
    lo: u64,
    hi: u64,
) -> Result<std::collections::HashMap<u64, u64>, String> {
    let text =
        std::fs::read_to_string(out).map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    if !text.lines().any(|l| l.trim() == "positions: instr line") {
        return Err(format!(
            "{}: recorded without --dump-instr=yes: no costs per instruction",
            out.display()
        ));
    }
    let position = |token: &str, last: u64| -> Option<u64> {
        match token.as_bytes().first()? {
            b'*' => Some(last),
            b'+' => last.checked_add(parse_number(&token[1..])?),
            b'-' => last.checked_sub(parse_number(&token[1..])?),
            _ => parse_number(token),
        }
    };
    let (mut counts, mut addr, mut after_call) = (std::collections::HashMap::new(), 0, false);
    for line in text.lines() {
        let starts_cost = line
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'*'));
        if !starts_cost {
            after_call |= line.starts_with("calls=");
            continue;
        }
        let mut fields = line.split_whitespace();
        addr = fields
            .next()
            .and_then(|t| position(t, addr))
            .ok_or_else(|| format!("{}: unreadable cost line {line:?}", out.display()))?;
        if std::mem::take(&mut after_call) {
            continue;
        }
        let ir = fields.nth(1).and_then(parse_number).unwrap_or(0);
        if (lo..hi).contains(&addr) {
            *counts.entry(addr).or_insert(0) += ir;
        }
    }
    Ok(counts)
}

/// A callgrind number: decimal, or hexadecimal after `0x`.
fn parse_number(token: &str) -> Option<u64> {
    match token.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => token.parse().ok(),
    }
}

/// The instructions a callgrind output file counted in all (its `summary:` line).
fn callgrind_total(out: &Path) -> Result<u64, String> {
    std::fs::read_to_string(out)
        .map_err(|e| format!("cannot read {}: {e}", out.display()))?
        .lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{}: no summary line", out.display()))
}

/// `memplex consume`'s workloads: `--mode count` and `--mode checksum`, under callgrind.
const CONSUMER_WORKLOADS: [&str; 2] = ["consume-count", "consume-checksum"];

/// The instructions `memplex consume --mode MODE --no-metadata --busy-poll` executes per
/// frame, against a `memplex run` of the default capture that delivers every frame
/// (heads inline, payload in `shm`, as `configs/deliver.toml` has them) as fast as it
/// can, waiting for the consumer when its ring is full. The consumer reads `FEW` and
/// then `FEW + MANY` frames under callgrind; the difference over `MANY` takes out what
/// connecting and starting cost, so the figure is the per-frame path's alone (a few
/// turns that found the ring empty are in it).
fn consumer_instructions(root: &Path, out_dir: &Path, mode: &str) -> Result<f64, String> {
    const FEW: u64 = 20_000;
    const MANY: u64 = 200_000;
    cargo(&["build", "--release", "-p", "memplex-cli"], &[])?;
    let memplex = root.join("target/release/memplex");
    let socket = out_dir.join("consume.sock");
    let config = out_dir.join("consume.toml");
    let capture = root.join("configs/captures/default.pcap");
    std::fs::write(
        &config,
        format!(
            r#"# Written by `cargo xtask instructions` for the consumer's workloads.
[device]
kind = "pcap"
path = "{}"
repeat = 1000000

[split]
mode = "l4"

[providers.hdr]
plugin = "builtin:heap"
buf_size = 256
unverified = true

[providers.payload]
plugin = "builtin:shm"
buf_size = 2048
pool_size = 1024
settings = {{ buffers = 16384 }}

[consumers.app]
socket = "{}"
ring_entries = 4096
quota = 2048
policy = "wait"
wake = "busy-poll"

[runtime]
sink = "count"

[[route]]
head = "hdr"
frags = "payload"
deliver = "app"
"#,
            capture.display(),
            socket.display()
        ),
    )
    .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let mut counts = Vec::new();
    for frames in [FEW, FEW + MANY] {
        let _ = std::fs::remove_file(&socket);
        let mut host = Command::new(&memplex)
            .args(["run", "-c"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", memplex.display()))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !socket.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = out_dir.join(format!("consume-{mode}-{frames}.callgrind"));
        eprintln!("xtask: counting consume-{mode} ({frames} frames) under callgrind");
        let run = if socket.exists() {
            Command::new("valgrind")
                .arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(&memplex)
                .args(["consume", "--socket"])
                .arg(&socket)
                .args(["--mode", mode, "--no-metadata", "--busy-poll", "--json"])
                .args(["--frames", &frames.to_string()])
                .output()
                .map_err(|e| format!("could not start valgrind: {e}"))
        } else {
            Err(format!(
                "memplex run never made its socket {}",
                socket.display()
            ))
        };
        let _ = host.kill();
        let host_out = host.wait_with_output();
        let run = run.map_err(|e| match &host_out {
            Ok(o) => format!(
                "{e}; memplex run said:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(_) => e,
        })?;
        if !run.status.success() {
            return Err(format!(
                "consume-{mode} failed under callgrind ({}):\n{}",
                run.status,
                String::from_utf8_lossy(&run.stderr)
            ));
        }
        counts.push(callgrind_total(&out)?);
    }
    let _ = std::fs::remove_file(&socket);
    let per_frame = counts[1].saturating_sub(counts[0]) as f64 / MANY as f64;
    println!("\nconsume-{mode}: {per_frame:.0} instructions a frame ({MANY} frames past the first {FEW})");
    Ok(per_frame)
}

/// The host library's unit-test binary, built with the release profile.
fn release_lib_test(root: &Path) -> Result<PathBuf, String> {
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "test",
            "--release",
            "-p",
            "memplex",
            "--lib",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "memplex" && v["profile"]["test"] == true)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo named no test binary for memplex's library".to_string())
}

/// A/B of two builds: `memplex bench BENCH_ARGS` from revision `REV` (built in a git
/// worktree under `target/ab/`) and from the working tree, run alternately, `--pairs`
/// times (default 6). Per row of the bench's summary: the median rate of each build,
/// the median of the per-pair ratios (new / base) and the pairs the new build won, and
/// the medians of each build's bit rate and same-run ratios (`x baseline`, `of
/// memcpy`). On a noisy
/// machine, alternating builds and taking ratios pair by pair is what makes a few
/// percent visible.
fn ab(root: &Path, args: &[&str]) -> Result<(), String> {
    let usage = "usage: cargo xtask ab REV [--pairs N] BENCH_ARGS... (e.g. cargo xtask ab HEAD~1 --pairs 8 configs/tcp-split.toml --frame-size 128 --proto tcp)";
    let (rev, mut rest) = args.split_first().ok_or(usage)?;
    let mut pairs = 6usize;
    if rest.first() == Some(&"--pairs") {
        pairs = rest
            .get(1)
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0)
            .ok_or(format!("--pairs wants a positive number of pairs\n{usage}"))?;
        rest = &rest[2..];
    }
    if rest.is_empty() {
        return Err(format!("no bench arguments\n{usage}"));
    }
    if rest.iter().any(|a| a.starts_with("--json")) {
        return Err("ab writes the bench's --json itself; leave it out".into());
    }
    // The base revision, built in a worktree of its own with its own target directory.
    let tree = root.join("target/ab/base");
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .map_err(|e| format!("could not start git: {e}"))
    };
    let commit = git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])?;
    if !commit.status.success() {
        return Err(format!("`{rev}` is not a revision of this repository"));
    }
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_string();
    if tree.join(".git").exists() {
        run(Command::new("git")
            .current_dir(&tree)
            .args(["checkout", "--quiet", "--detach", "--force", &commit]))?;
    } else {
        let _ = git(&["worktree", "prune"]);
        run(Command::new("git").current_dir(root).args([
            "worktree",
            "add",
            "--quiet",
            "--detach",
            "--force",
            tree.to_str().ok_or("target path is not UTF-8")?,
            &commit,
        ]))?;
    }
    eprintln!("xtask: building {rev} ({commit:.12}) in {}", tree.display());
    run(Command::new(env!("CARGO"))
        .current_dir(&tree)
        .args(["xtask", "build", "--release"]))?;
    eprintln!("xtask: building the working tree");
    build(root, "release")?;
    let bins = [
        ("base", tree.join("target/release/memplex")),
        ("new", root.join("target/release/memplex")),
    ];
    // rows[(traffic, variant)][build] = per pair (pps, vs_baseline, of_memcpy, Gbit/s)
    type Reading = (f64, Option<f64>, Option<f64>, f64);
    type Row = [Vec<Reading>; 2];
    let mut rows: Vec<((String, String), Row)> = Vec::new();
    for pair in 1..=pairs {
        for (k, (name, bin)) in bins.iter().enumerate() {
            let json = root.join(format!("target/ab/{name}.json"));
            eprintln!("xtask: pair {pair}/{pairs}: {name}");
            let out = Command::new(bin)
                .current_dir(root)
                .arg("bench")
                .args(rest)
                .arg("--json")
                .arg(&json)
                .output()
                .map_err(|e| format!("could not start {}: {e}", bin.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "the {name} build's bench failed ({}):\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let text = std::fs::read_to_string(&json)
                .map_err(|e| format!("cannot read {}: {e}", json.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not JSON: {e}", json.display()))?;
            for r in v["summary"].as_array().into_iter().flatten() {
                let key = (
                    r["traffic"].as_str().unwrap_or("?").to_string(),
                    r["variant"].as_str().unwrap_or("?").to_string(),
                );
                let at = match rows.iter().position(|(k2, _)| *k2 == key) {
                    Some(i) => i,
                    None => {
                        rows.push((key, [Vec::new(), Vec::new()]));
                        rows.len() - 1
                    }
                };
                rows[at].1[k].push((
                    r["pps"].as_f64().unwrap_or(0.0),
                    r["vs_baseline"].as_f64(),
                    r["of_memcpy"].as_f64(),
                    r["gbps"].as_f64().unwrap_or(0.0),
                ));
            }
        }
    }
    let median = |mut v: Vec<f64>| -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    };
    let show =
        |x: Option<f64>, digits: usize| x.map_or("-".to_string(), |x| format!("{x:.digits$}"));
    println!("\n{pairs} pairs, base = {rev} ({commit:.12}), new = the working tree; medians\n");
    println!(
        "{:<14} {:<28} {:>10} {:>10} {:>11} {:>9} {:>5}   {:>15}   {:>15}",
        "traffic",
        "variant",
        "base Mpps",
        "new Mpps",
        "Gbit/s b/n",
        "new/base",
        "wins",
        "x baseline b/n",
        "of memcpy b/n"
    );
    for ((traffic, variant), [base, new]) in rows {
        let ratios: Vec<f64> = base
            .iter()
            .zip(&new)
            .filter(|(b, _)| b.0 > 0.0)
            .map(|(b, n)| n.0 / b.0)
            .collect();
        let wins = ratios.iter().filter(|&&r| r > 1.0).count();
        let of = |v: &[Reading], f: fn(&Reading) -> Option<f64>| {
            median(v.iter().filter_map(f).collect())
        };
        println!(
            "{traffic:<14} {variant:<28} {:>10} {:>10} {:>11} {:>9} {:>5}   {:>15}   {:>15}",
            show(median(base.iter().map(|r| r.0 / 1e6).collect()), 2),
            show(median(new.iter().map(|r| r.0 / 1e6).collect()), 2),
            format!(
                "{} / {}",
                show(median(base.iter().map(|r| r.3).collect()), 1),
                show(median(new.iter().map(|r| r.3).collect()), 1)
            ),
            show(median(ratios.clone()), 3),
            format!("{wins}/{}", ratios.len()),
            format!(
                "{} / {}",
                show(of(&base, |r| r.1), 3),
                show(of(&new, |r| r.1), 3)
            ),
            format!(
                "{} / {}",
                show(of(&base, |r| r.2), 3),
                show(of(&new, |r| r.2), 3)
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::per_instruction;

    /// Positions absolute (decimal or hex), relative and repeated are followed; the
    /// line after `calls=` moves the position but its cost is the callee's, left out;
    /// only addresses in the range are kept.
    #[test]
    fn per_instruction_costs_follow_the_compressed_positions() {
        let dir = std::env::temp_dir().join(format!("xtask-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("t.callgrind");
        std::fs::write(
            &file,
            "# callgrind format\nversion: 1\npositions: instr line\nevents: Ir\n\
             fn=(1) f\n0x1000 10 4\n+2 * 4\n+3 11 8\ncfn=(2) g\ncalls=1 0x2000 20\n\
             +1 * 999\n* * 2\n-6 10 1\n0x3000 30 7\nfn=(2)\n0x2000 20 5\n",
        )
        .expect("write");
        let counts = per_instruction(&file, 0x1000, 0x1010).expect("parsed");
        let mut seen: Vec<(u64, u64)> = counts.into_iter().collect();
        seen.sort();
        // 0x1000: 4 + 1 (back by 6 from 0x1006); 0x1002: 4; 0x1005: 8; 0x1006: 2 (the
        // call's 999 left out); 0x3000 and 0x2000 are outside.
        assert_eq!(seen, [(0x1000, 5), (0x1002, 4), (0x1005, 8), (0x1006, 2)]);

        std::fs::write(&file, "positions: line\nevents: Ir\nfn=(1) f\n10 4\n").expect("write");
        let err = per_instruction(&file, 0, u64::MAX).expect_err("no instructions");
        assert!(err.contains("--dump-instr=yes"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
