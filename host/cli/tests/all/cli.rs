//! The `memplex` binary, run as a user would.

use super::*;
use std::process::Command;

/// True when this process may build network namespaces; else false, saying why, after
/// making sure this is not CI (CI runs as root: these tests must run there).
pub(crate) fn privileged_or_skip(why: &str) -> bool {
    if memplex_testkit::net::privileged() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but not privileged: {why}"
    );
    eprintln!("skipping: {why}");
    false
}

fn memplex(args: &[&str]) -> (i32, String) {
    memplex_in(args, "".as_ref(), None, &[])
}

/// Runs memplex with `plugin_path` as MEMPLEX_PLUGIN_PATH, in `dir` when given, with
/// `env` set.
pub(crate) fn memplex_in(
    args: &[&str],
    plugin_path: &std::path::Path,
    dir: Option<&str>,
    env: &[(&str, &str)],
) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_memplex"));
    cmd.args(args)
        .env("MEMPLEX_PLUGIN_PATH", plugin_path)
        .envs(env.iter().copied());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("run memplex");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn providers_lists_builtins_and_native_plugins_but_not_fixtures() {
    let (code, out) = memplex(&[
        "--plugin-dir",
        &build_dir().display().to_string(),
        "providers",
    ]);
    assert_eq!(code, 0, "{out}");
    for needle in [
        "builtin:slab",
        "libmemplex_plugin_hugepage.so",
        "libmemplex_plugin_heap.so",
    ] {
        assert!(out.contains(needle), "missing {needle}:\n{out}");
    }
    // With the build dir given explicitly, every .so in it is listed, fixtures included,
    // and the broken ones say why.
    assert!(out.contains("0.0.1"), "{out}");
}

#[test]
fn inspect_shows_info() {
    let slab = so("memplex_plugin_slab").display().to_string();
    let (code, out) = memplex(&["providers", "inspect", &slab, "--set", "buffers=100"]);
    assert_eq!(code, 0, "{out}");
    for want in [
        "capacity",
        "100",
        "sealed memfd",
        "abi            ┆ 0.1.2",
        "exportable     ┆ yes",
    ] {
        assert!(out.contains(want), "`{want}` in:\n{out}");
    }
    // Private memory, on request, cannot be shared, and inspect says why.
    let (code, out) = memplex(&["providers", "inspect", &slab, "--set", "shared=false"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("anonymous mmap") && out.contains("no: region 0"),
        "{out}"
    );
}

#[test]
fn check_provider_passes_the_shipped_providers() {
    for name in ["heap", "slab", "hugepage", "shm"] {
        let path = so(&format!("memplex_plugin_{name}")).display().to_string();
        // heap hands out separate allocations and declares no region: certified only as
        // unverified, on request.
        let args: &[&str] = if name == "heap" {
            &["check-provider", &path, "--unverified"]
        } else {
            &["check-provider", &path]
        };
        let (code, out) = memplex(args);
        assert_eq!(code, 0, "{name}:\n{out}");
        assert!(
            out.contains("checks passed") && out.contains("ns per buffer"),
            "{out}"
        );
        // The certificate an author pastes into a README: verdict, cost, what was checked.
        let (result, memory) = if name == "heap" {
            (
                "result    PASS: 11 checks passed, 1 warned, 0 failed",
                "memory    no region declared: UNVERIFIED",
            )
        } else {
            (
                "result    PASS: 12 checks passed, 0 warned, 0 failed",
                "memory    1 region of",
            )
        };
        for want in [
            "memplex check-provider certificate",
            result,
            memory,
            "the built-in slab's",
            "budget 20x",
            "checked   buf_size 2048, pool_size 256; native: no sandbox limits",
        ] {
            assert!(out.contains(want), "`{want}` in:\n{out}");
        }
    }
}

#[test]
fn check_provider_fails_a_provider_without_a_declared_region_unless_told() {
    let path = so("memplex_plugin_heap").display().to_string();
    let (code, out) = memplex(&["check-provider", &path]);
    assert_eq!(code, 1, "{out}");
    for want in [
        "result    FAIL: 11 checks passed, 0 warned, 1 failed",
        "ProviderInfo::region(base, len)",
        "--unverified",
    ] {
        assert!(out.contains(want), "`{want}` in:\n{out}");
    }
}

#[test]
fn check_provider_fails_each_broken_provider_with_a_named_reason() {
    let faulty = so("memplex_fixture_faulty").display().to_string();
    for (fault, reason) in [
        ("null", "null buffer"),
        ("duplicate", "again while the host still holds it"),
        ("short", "at least 2048 were asked for"),
        ("misaligned", "not aligned to the promised 64 bytes"),
        ("overlap", "overlapping buffer id"),
        ("id-range", "declared a capacity of 256"),
        ("panic-alloc", "deliberate panic in alloc_bulk"),
        ("panic-init", "deliberate panic in init"),
        ("panic-release", "deliberate panic in release_bulk"),
        (
            "overcount",
            "claimed to write 69 descriptors into room for 64",
        ),
        ("rehand", "again while the host still holds it"),
        ("slow", "over the budget of 20x (--max-cost-ratio)"),
    ] {
        let (code, out) = memplex(&[
            "check-provider",
            &faulty,
            "--set",
            &format!("fault={fault}"),
        ]);
        assert_eq!(code, 1, "fault {fault} must fail:\n{out}");
        assert!(
            out.contains(reason),
            "fault {fault}: expected `{reason}` in:\n{out}"
        );
        assert!(
            !out.contains("panicked at") || fault.starts_with("panic"),
            "{out}"
        );
    }
    // A provider that takes buffers back that it never handed out fails too.
    let (code, out) = memplex(&["check-provider", &faulty, "--set", "fault=none"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL") && out.contains("accepted a buffer it never handed out"),
        "{out}"
    );
    // The budget can be set: an absolute one that nothing meets fails the cost check.
    let (code, out) = memplex(&["check-provider", "slab", "--max-ns-per-buffer", "0.001"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("over the budget of 0.001 ns"), "{out}");
}

#[test]
fn check_provider_passes_providers_of_memory_the_host_may_not_write() {
    // devmem (ABI 0.1.2) is written with fill and one fill_gather per 64 buffers; the
    // fixture built against 0.1.1 with fill and a fill_bulk per buffer. Neither can be
    // read by the host, so nothing is read back, and both keep the contract.
    for (lib, bulk) in [
        (
            "memplex_fixture_devmem",
            "odd buffers by fill_gather (64 a call)",
        ),
        ("memplex_fixture_abi_0_1_1", "odd buffers by fill_bulk"),
    ] {
        let (code, out) = memplex(&["check-provider", &so(lib).display().to_string()]);
        assert_eq!(code, 0, "{lib}:\n{out}");
        assert!(
            out.contains("result    PASS: 12 checks passed, 0 warned, 0 failed"),
            "{lib}:\n{out}"
        );
        assert!(
            out.contains(bulk) && out.contains("skipped reading back"),
            "{lib}:\n{out}"
        );
    }
}

#[test]
fn check_provider_refuses_what_is_not_a_provider() {
    for (lib, reason) in [
        ("memplex_fixture_old_abi", "built against memplex-abi 0.0.1"),
        ("memplex_fixture_not_a_provider", "not a memplex provider"),
    ] {
        let (code, out) = memplex(&["check-provider", &so(lib).display().to_string()]);
        assert_eq!(code, 1, "{out}");
        assert!(out.starts_with("error: ") && out.contains(reason), "{out}");
    }
    let (code, out) = memplex(&["check-provider", "/no/such/file.so"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("/no/such/file.so") && out.contains("No such file"),
        "{out}"
    );
}

#[test]
fn demo_runs_and_verifies_every_frame() {
    let (code, out) = memplex(&["demo", "--synthetic", "--frames", "5000"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("every frame reassembled byte for byte"),
        "{out}"
    );
    assert!(out.contains("libmemplex_plugin_slab.so"), "{out}");
}

#[test]
fn out_of_tree_provider_passes_check_provider() {
    let lib = build_dir().join("libacme_ring_provider.so");
    assert!(
        lib.is_file(),
        "{} is missing: `cargo xtask test` builds examples/third-party-provider",
        lib.display()
    );
    let (code, out) = memplex(&["check-provider", &lib.display().to_string()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("acme-ring"), "{out}");
}

pub(crate) fn configs(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn run_reports_json_lines_and_serves_metrics_on_loopback() {
    let port = crate::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args([
            "run",
            "-c",
            &configs("tcp-split.toml"),
            "--json",
            "--duration",
            "2",
        ])
        .env("MEMPLEX_DEVICE__REPEAT", "100000000")
        .env("MEMPLEX_RUNTIME__STATS_INTERVAL", "0.2")
        .env("MEMPLEX_RUNTIME__METRICS", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let mut metrics = String::new();
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        s.read_to_string(&mut metrics).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        metrics.starts_with("HTTP/1.1 200 OK")
            && metrics.contains("memplex_frames_total{queue=\"default.pcap q0\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "memplex_pool_alloc_fast_total{queue=\"default.pcap q0\",provider=\"payload\"}"
        ),
        "{metrics}"
    );
    // What a scraper expects: HELP and TYPE per family, gauges as gauges, an EOF line.
    for want in [
        "# HELP memplex_frames Frames received.",
        "# TYPE memplex_frames counter",
        "# TYPE memplex_pool_inflight gauge",
        "# TYPE memplex_provider_quarantined gauge",
        "memplex_provider_fallbacks_total{queue=\"default.pcap q0\",provider=\"payload\"} 0",
        "memplex_provider_stranded_total{queue=\"default.pcap q0\",provider=\"payload\"} 0",
        // heap declares no region and runs only because the config trusts it.
        "memplex_provider_unverified{queue=\"default.pcap q0\",provider=\"hdr\"} 1",
        "memplex_provider_unverified{queue=\"default.pcap q0\",provider=\"payload\"} 0",
        "# EOF",
    ] {
        assert!(metrics.contains(want), "{want} in {metrics}");
    }
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(lines.len() >= 3, "live lines and a final one: {stdout}");
    let last = lines.last().unwrap();
    assert_eq!(last["final"], true);
    let frames = last["total"]["received"]["frames"].as_u64().unwrap();
    assert!(
        frames > 0 && last["total"]["sink"]["verified"].as_u64() == Some(frames),
        "{last}"
    );
    assert!(lines[0]["pps"].as_f64().is_some());
    let providers = last["total"]["providers"].as_array().unwrap();
    let unverified: Vec<(&str, bool)> = providers
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["unverified"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(unverified, [("hdr", true), ("payload", false)]);
}

#[test]
fn config_check_names_the_key() {
    let (code, out) = memplex(&["config", "check", &configs("nvme-tcp.toml")]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("nvme-tcp") && out.contains("hugepage"),
        "{out}"
    );
    let bad = std::env::temp_dir().join(format!("memplex-bad-{}.toml", std::process::id()));
    std::fs::write(
        &bad,
        std::fs::read_to_string(configs("tunnel.toml"))
            .unwrap()
            .replace("mode = \"l4\"", "mode = \"l7\""),
    )
    .unwrap();
    let (code, out) = memplex(&["config", "check", &bad.display().to_string()]);
    std::fs::remove_file(&bad).unwrap();
    assert_eq!(code, 1);
    assert!(out.contains("split.mode") && out.contains("l7"), "{out}");
}

#[test]
fn gen_pcap_refuses_an_unknown_mix() {
    let (code, out) = memplex(&["gen-pcap", "--out", "/tmp/x.pcap", "--mix", "nope"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("unknown mix `nope`") && out.contains("default, nvme"),
        "{out}"
    );
}

/// A full disk is named as such (pcap-file's own words for any I/O error are "Error
/// reading bytes", even when writing).
#[test]
fn gen_pcap_to_a_full_disk_says_the_disk_is_full() {
    let (code, out) = memplex(&["gen-pcap", "--out", "/dev/full"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("writing /dev/full: No space left on device") && !out.contains("reading"),
        "{out}"
    );
}

#[test]
fn demo_without_privileges_says_what_it_needs_and_replays_a_capture() {
    // Run as an unprivileged user when we are root (as in CI), from a world-readable
    // copy of the binary and plugins (the checkout itself may not be readable to them).
    let dir = std::env::temp_dir().join(format!("memplex-unpriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("memplex");
    std::fs::copy(env!("CARGO_BIN_EXE_memplex"), &exe).unwrap();
    for name in ["heap", "slab", "hugepage", "shm"] {
        let lib = format!("libmemplex_plugin_{name}.so");
        std::fs::copy(build_dir().join(&lib), dir.join(&lib)).unwrap();
    }
    let mut cmd = if memplex_testkit::net::privileged() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let out = cmd
        .arg("demo")
        .env("MEMPLEX_PLUGIN_PATH", "")
        .current_dir(&dir)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("needs root") && text.contains("kind = \"pcap\""),
        "{text}"
    );
    // TCP goes to the demo's consumer process, which verifies it in place; the rest is
    // verified by the in-process sink.
    assert!(text.contains("verified 150000, mismatched 0"), "{text}");
    assert!(
        text.contains("consumer process `demo`")
            && text.contains("read 150000 frames")
            && text.contains("verified 150000, mismatched 0, heads inline 150000"),
        "{text}"
    );
}

/// `memplex bench` with the plugin path set, from the configs directory.
fn bench(args: &[&str]) -> (i32, String) {
    let args: Vec<&str> = std::iter::once("bench")
        .chain(args.iter().copied())
        .collect();
    memplex_in(&args, &build_dir(), Some(&configs("")), &[])
}

#[test]
fn bench_compares_providers_in_memory_and_writes_every_output() {
    let dir = std::env::temp_dir().join(format!("memplex-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (md, json, svg) = (dir.join("b.md"), dir.join("b.json"), dir.join("b.svg"));
    let (code, out) = bench(&[
        "tcp-split.toml",
        "--vary",
        "providers.payload.plugin=slab,heap",
        "--set",
        "providers.payload.unverified=true",
        "--frame-size",
        "512,1500",
        "--proto",
        "tcp",
        "--repeats",
        "2",
        "--seconds",
        "0.2",
        "--baseline",
        "heap",
        "--markdown",
        md.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ratios against `heap`"), "{out}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // 2 traffics x 4 variants (slab, heap, and the memcpy and bare loops) x 2 repeats,
    // interleaved.
    let rounds = doc["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 16);
    let order: Vec<&str> = rounds[..8]
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["slab", "heap", "memcpy", "bare", "slab", "heap", "memcpy", "bare"]
    );
    for r in rounds {
        assert!(r["frames"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["drops"].as_u64(), Some(0), "{r}");
    }
    let summary = doc["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 8);
    for s in summary {
        let variant = s["variant"].as_str().unwrap();
        let vs = s["vs_baseline"].as_f64().unwrap();
        let of_bare = s["of_bare"].as_f64().unwrap();
        let of_memcpy = s["of_memcpy"].as_f64().unwrap();
        // The peak is reset before each round, so it is measured, never left blank.
        assert!(s["peak_rss_mib"].as_f64().unwrap() > 0.0, "{s}");
        match variant {
            "heap" => assert_eq!(vs, 1.0),
            "bare" => assert_eq!(of_bare, 1.0),
            "memcpy" => assert_eq!(of_memcpy, 1.0),
            _ => assert!(vs > 0.0 && of_bare > 0.0 && of_bare < 1.0, "{s}"),
        }
        if variant != "bare" && variant != "memcpy" {
            // Payload of TCP frames goes to the provider under test.
            assert!(s["providers"]["payload"].as_u64().unwrap() > 0, "{s}");
            assert!(s["hit_rate"].as_f64().unwrap() > 0.9, "{s}");
        }
    }
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.contains("| 1500 B tcp | slab |"), "{md}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("slab") && svg.contains("512 B tcp"),
        "{svg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The summary of `variant` in a `memplex bench --json` document.
fn summary_of<'a>(doc: &'a serde_json::Value, variant: &str) -> &'a serde_json::Value {
    doc["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["variant"] == variant)
        .unwrap_or_else(|| panic!("no `{variant}` in {doc}"))
}

/// One short round of `deliver.toml` at 256 B, in-process and to a `consumer` process,
/// with `extra` arguments.
fn bench_delivering(consumer: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "deliver.toml",
        "--consumer",
        consumer,
        "--no-bare",
        "--frame-size",
        "256",
        "--repeats",
        "1",
        "--seconds",
        "0.3",
    ];
    args.extend_from_slice(extra);
    bench(&args)
}

#[test]
fn bench_profile_breaks_each_frame_down_by_stage() {
    let dir = std::env::temp_dir().join(format!("memplex-bench-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("b.json");
    let (code, out) = bench_delivering("count", &["--profile", "--json", json.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("per-stage breakdown"), "{out}");
    for stage in [
        "device", "split", "route", "place", "deliver", "sink", "recycle", "refill",
    ] {
        assert!(out.contains(stage), "no `{stage}` column: {out}");
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let of = |variant: &str| {
        let s = summary_of(&doc, variant);
        let p = s["profile_ns_per_frame"].clone();
        assert!(p.is_object(), "`{variant}` has no profile: {s}");
        move |stage: &str| p[stage].as_f64().unwrap_or_else(|| panic!("{stage}: {p}"))
    };
    let (inproc, consumer) = (of("deliver"), of("deliver -> consumer"));
    // Every frame is split, routed and placed on both; only the consumer variant hands
    // frames to a process and takes buffers back from it; only the other has a sink.
    for p in [&inproc, &consumer] {
        assert!(p("split") > 0.0 && p("route") > 0.0 && p("place") > 0.0);
    }
    assert!(consumer("deliver") > inproc("deliver"), "{doc}");
    assert!(consumer("refill") > inproc("refill"), "{doc}");
    assert!(inproc("sink") > 0.0 && consumer("sink") == 0.0, "{doc}");
    // The busy-polling consumer's idle turns per frame: measured on its variant only.
    let idle = |variant: &str| summary_of(&doc, variant)["consumer_idle_per_frame"].clone();
    assert!(idle("deliver -> consumer").as_f64().is_some(), "{doc}");
    assert!(idle("deliver").is_null(), "{doc}");
    assert!(out.contains("idle/frame"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_measures_what_the_machine_takes_from_the_consumers_cpu() {
    // A consumer that reads receive times, woken by eventfd: beside its latency, the
    // stalls of its CPU probed alone and the delays of waking a thread asleep there.
    let dir = std::env::temp_dir().join(format!("memplex-bench-stalls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("b.json");
    let (code, out) = bench_delivering(
        "meta",
        &["--wake", "eventfd", "--json", json.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let consumer = summary_of(&doc, "deliver -> consumer");
    assert!(
        consumer["latency_ns"]["samples"].as_u64() > Some(0),
        "{consumer}"
    );
    // The in-process side has no consumer CPU to probe.
    let inproc = summary_of(&doc, "deliver");
    assert!(
        inproc["stalls"].is_null() && inproc["wakeups"].is_null(),
        "{inproc}"
    );
    let two_cpus = std::thread::available_parallelism().map_or(1, usize::from) >= 2;
    if two_cpus {
        // The consumer is pinned to CPU 1, and that is the CPU probed.
        let (st, wk) = (&consumer["stalls"], &consumer["wakeups"]);
        assert_eq!(st["cpu"], 1, "{consumer}");
        assert!(st["seconds"].as_f64().is_some_and(|s| s >= 0.25), "{st}");
        let lost = st["lost"].as_f64().unwrap();
        assert!((0.0..1.0).contains(&lost), "{st}");
        assert!(
            st["floor_p999_ns"].as_u64() >= st["floor_p99_ns"].as_u64(),
            "{st}"
        );
        assert!(wk["count"].as_u64() > Some(10), "{wk}");
        assert!(wk["p99_ns"].as_u64() >= wk["p50_ns"].as_u64(), "{wk}");
        assert!(out.contains("stalls a second of 20 us or more"), "{out}");
        assert!(out.contains("woken through an eventfd"), "{out}");
    } else {
        // One CPU: nothing is pinned, so there is no consumer CPU of its own to probe.
        assert!(consumer["stalls"].is_null(), "{consumer}");
        assert!(!out.contains("stalls a second"), "{out}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_spins_an_eventfd_consumer_only() {
    // A busy-polling consumer never sleeps, so it has no spin before sleeping.
    let (code, out) = bench_delivering("meta", &["--spin-us", "50"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("--spin-us") && out.contains("--wake eventfd"),
        "{out}"
    );
    // With eventfd it runs, and the consumer reads frames.
    let (code, out) = bench_delivering("count", &["--wake", "eventfd", "--spin-us", "50"]);
    assert_eq!(code, 0, "{out}");
    let row = out
        .lines()
        .find(|l| l.contains("deliver -> consumer"))
        .unwrap();
    let mpps: f64 = row.split('┆').nth(2).unwrap().trim().parse().unwrap();
    assert!(mpps > 0.01, "{row}");
}

#[test]
fn bench_keeps_the_in_process_side_of_a_delivering_route_in_process() {
    // TCP frames take `deliver.toml`'s delivering route: the in-process side must sink
    // them, not drop them for want of a consumer.
    let dir = std::env::temp_dir().join(format!("memplex-bench-inproc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("b.json");
    let (code, out) = bench_delivering(
        "count",
        &["--proto", "tcp", "--json", json.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for variant in ["deliver", "deliver -> consumer"] {
        let s = summary_of(&doc, variant);
        assert_eq!(s["drops"].as_u64(), Some(0), "{variant}: {s}");
        assert!(
            s["pps"].as_f64().is_some_and(|p| p > 10_000.0),
            "{variant}: {s}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_sets_a_checksumming_consumer_against_the_checksum_sink() {
    let (code, out) = bench_delivering("checksum", &[]);
    assert_eq!(code, 0, "{out}");
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("256 B")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    // Both variants moved frames: the consumer read them (a figure, not 0.000).
    for r in rows {
        let mpps: f64 = r.split('┆').nth(2).unwrap().trim().parse().unwrap();
        assert!(mpps > 0.01, "{r}");
    }
}

#[test]
fn bench_gives_no_loop_ratio_to_a_variant_with_other_queues() {
    let dir = std::env::temp_dir().join(format!("memplex-bench-queues-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("b.json");
    let (code, out) = bench(&[
        "tcp-split.toml",
        "--vary",
        "device.queues=1,2",
        "--frame-size",
        "256",
        "--repeats",
        "1",
        "--seconds",
        "0.2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("the bare and memcpy loops read 1 queue as `1` does; 2 reads another number"),
        "{out}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let of = |variant: &str| summary_of(&doc, variant);
    // The loops ran on one queue: a ratio for the one-queue variant only.
    assert!(of("1")["of_memcpy"].as_f64().is_some(), "{doc}");
    assert!(
        of("2")["of_memcpy"].is_null() && of("2")["of_bare"].is_null(),
        "{doc}"
    );
    assert!(of("2")["vs_baseline"].as_f64().is_some(), "{doc}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_refuses_bad_input_with_the_reason() {
    for (args, want) in [
        (
            &["--vary", "providers.payload.plugin"][..],
            "is not KEY=V1,V2",
        ),
        (
            &["--baseline", "nope"][..],
            "--baseline `nope` is not one of the variants",
        ),
        (
            &["--source", "pcap"][..],
            "--source pcap needs --capture FILE",
        ),
        (&["--frame-size", "10"][..], "frame size 10 is out of range"),
        (&["--repeats", "0"][..], "0 is not in 1..=1000"),
        (&["no-such.toml"][..], "reading no-such.toml"),
        (&["--set", "device.queues"][..], "is not KEY=VALUE"),
        // Every route delivers under --consumer: the heap route cannot, and the
        // engine's refusal is what the bench says (not a socket that never appeared).
        (
            &["tcp-split.toml", "--consumer", "count", "--no-bare"][..],
            "route[1] delivers to consumer `bench`, but its frags provider `hdr` cannot share its memory",
        ),
    ] {
        let (code, out) = bench(args);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(out.contains(want), "{args:?}: {out}");
    }
}

#[test]
fn bench_replays_a_capture_at_a_rate_and_over_a_veth() {
    let (code, out) = bench(&[
        "tcp-split.toml",
        "--source",
        "pcap",
        "--capture",
        "captures/default.pcap",
        "--rate",
        "20000",
        "--repeats",
        "1",
        "--seconds",
        "0.3",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("default.pcap at 20000 fps"), "{out}");
    if !privileged_or_skip("the veth half needs root (it creates network namespaces)") {
        return;
    }
    let (code, out) = bench(&[
        "tcp-split.toml",
        "--source",
        "veth",
        "--frame-size",
        "256",
        "--repeats",
        "1",
        "--seconds",
        "0.5",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("256 B udp") && out.contains("bare"), "{out}");
}

#[test]
fn bench_stops_cleanly_on_ctrl_c_and_reports_what_it_measured() {
    let json = std::env::temp_dir().join(format!("memplex-bench-int-{}.json", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args([
            "bench",
            "tcp-split.toml",
            "--repeats",
            "100",
            "--seconds",
            "0.2",
            "--json",
        ])
        .arg(&json)
        .env("MEMPLEX_PLUGIN_PATH", build_dir())
        .current_dir(configs(""))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for some rounds to finish; far less than the 100 x 2 x 3 asked for.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(130), "{stdout}{stderr}");
    assert!(
        stderr.contains("interrupted:") && stderr.contains("rounds measured"),
        "{stderr}"
    );
    assert!(
        stdout.contains("tcp-split") && stdout.contains("Mpps"),
        "{stdout}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rounds = doc["rounds"].as_array().unwrap().len();
    assert!(rounds > 0 && rounds < 600, "{rounds} rounds");
    std::fs::remove_file(&json).unwrap();
}

#[test]
fn check_provider_runs_on_wasm_providers() {
    for provider in ["slab.wasm", "ring.wasm"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_memplex"))
            .args(["check-provider", provider])
            .env("MEMPLEX_PLUGIN_PATH", build_dir())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("all 12 checks passed"), "{text}");
        assert!(text.contains("memory    not touched by address"), "{text}");
        assert!(
            text.contains("WASM limits: 256 MiB of memory, 100 ms per call"),
            "{text}"
        );
        // Guest memory is written with fill and with the gathered fill the host places
        // frames with, and read back with read, not skipped.
        assert!(
            text.contains("read back a pattern in")
                && text.contains("fill and bulk fill ops (read back with its read op)")
                && text.contains("odd buffers by fill_gather (64 a call)"),
            "{text}"
        );
    }
}

#[test]
fn run_fails_when_frames_are_dropped_for_a_fault_unless_allowed() {
    let dir = std::env::temp_dir().join(format!("memplex-faultrun-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("faulting.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[device]
kind = "pcap"
path = "{}"

[providers.hdr]
plugin = "builtin:slab"
buf_size = 256

[providers.payload]
plugin = "{}"
buf_size = 64
settings = {{ fault = "panic-alloc", after = 2 }}

[[route]]
head = "hdr"
frags = "payload"
"#,
            configs("captures/default.pcap"),
            so("memplex_fixture_faulty").display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let (code, out) = memplex(&["run", "-c", &config, "--json"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("frames dropped because a provider faulted")
            && out.contains("`payload`")
            && out.contains("allow_fault_drops"),
        "{out}"
    );
    let (code, out) = memplex_in(
        &["run", "-c", &config, "--json"],
        "".as_ref(),
        None,
        &[("MEMPLEX_RUNTIME__ALLOW_FAULT_DROPS", "true")],
    );
    assert_eq!(code, 0, "{out}");
    // The JSON report says which provider faulted, why, and what that cost.
    let last: serde_json::Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a final JSON line");
    let payload = &last["total"]["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "payload")
        .unwrap()
        .clone();
    assert_eq!(payload["quarantined"], 1, "{payload}");
    assert!(
        payload["fault"].as_str().unwrap().contains("panic"),
        "{payload}"
    );
    assert!(
        payload["dropped"]["fault"].as_u64().unwrap() > 0,
        "{payload}"
    );
    assert_eq!(payload["leaked"], 0, "{payload}");
    assert!(payload["checks"]["stranded"].is_u64(), "{payload}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_numbers_on_the_command_line_are_refused_with_the_reason() {
    let tcp = configs("tcp-split.toml");
    for (args, want) in [
        (
            vec!["run", "-c", &tcp, "--duration", "nan"],
            "not a finite number",
        ),
        (vec!["run", "-c", &tcp, "--duration", "-1"], "below 0"),
        (
            vec!["run", "-c", &tcp, "--duration", "1e300"],
            "above the largest",
        ),
        (
            vec!["run", "-c", &tcp, "--duration", "1e-310"],
            "below the smallest",
        ),
        (vec!["demo", "--seconds", "inf"], "not a finite number"),
        (vec!["bench", "--seconds", "0"], "below the smallest"),
        (vec!["bench", "--rate", "0"], "--rate"),
        (vec!["bench", "--repeats", "0"], "--repeats"),
        (
            vec!["gen-pcap", "--out", "/dev/null", "--frames", "0"],
            "--frames",
        ),
        (
            vec!["check-provider", "slab", "--buf-size", "0"],
            "--buf-size",
        ),
    ] {
        let (code, out) = memplex(&args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(
            out.contains(want) && !out.contains("panicked"),
            "{args:?}: {out}"
        );
    }
}

#[test]
fn privileges_are_judged_by_capabilities_not_by_uid() {
    if !privileged_or_skip("needs root to drop capabilities while staying uid 0") {
        return;
    }
    // Root with an empty capability bounding set: uid 0, but no CAP_NET_ADMIN.
    let out = Command::new("setpriv")
        .args(["--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_memplex"))
        .args(["demo", "--json"])
        .env("MEMPLEX_PLUGIN_PATH", build_dir())
        .output()
        .expect("setpriv (util-linux)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("needs root, with CAP_NET_ADMIN") && text.contains("replays"),
        "root without capabilities is told what it lacks and gets the replay: {text}"
    );
}

#[test]
fn config_check_refuses_what_run_would() {
    let dir = std::env::temp_dir().join(format!("memplex-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(configs("tcp-split.toml")).unwrap();
    let capture = configs("captures/default.pcap");
    for (edit, want) in [
        (
            (
                "buf_size = 2048",
                "buf_size = 2048\nsettings = { bufferz = 9 }",
            ),
            "unknown setting `bufferz`",
        ),
        (
            ("path = \"captures/default.pcap\"", "path = \"/dev/zero\""),
            "/dev/zero: is not a regular file",
        ),
        (
            (
                "path = \"captures/default.pcap\"",
                "path = \"nothing-here.pcap\"",
            ),
            "nothing-here.pcap: cannot read",
        ),
        (
            ("unverified = true", "unverified = false"),
            "provider `hdr`: provider `heap",
        ),
    ] {
        let file = dir.join("check.toml");
        let body = text
            .replace(
                "path = \"captures/default.pcap\"",
                &format!("path = \"{capture}\""),
            )
            .replacen(
                edit.0.replace("captures/default.pcap", &capture).as_str(),
                edit.1,
                1,
            );
        std::fs::write(&file, body).unwrap();
        let (code, out) = memplex(&["config", "check", &file.display().to_string()]);
        assert_eq!(code, 1, "{edit:?}: {out}");
        assert!(out.contains(want), "{edit:?}: {out}");
        assert_eq!(out.matches(want).count(), 1, "said once: {out}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn check_provider_applies_the_wasm_limits_it_is_given() {
    let out = Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args([
            "check-provider",
            "slab.wasm",
            "--max-memory-mib",
            "1",
            "--call-deadline-ms",
            "20",
        ])
        .env("MEMPLEX_PLUGIN_PATH", build_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("more memory at start than its limit of 1 MiB (max_memory_mib)")
            && text.contains("WASM limits: 1 MiB of memory, 20 ms per call"),
        "{text}"
    );
}

#[test]
fn a_second_run_on_the_same_tap_is_refused_unless_it_attaches() {
    use memplex_testkit::net::TestNet;
    if !privileged_or_skip("needs root for a TAP device in a namespace") {
        return;
    }
    TestNet::sweep_stale();
    let net = TestNet::create(2).expect("the test network");
    // A run on the TAP `net.tap` in namespace `ns`.
    let run = |ns: &str, seconds: &str, attach: bool| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(env!("CARGO_BIN_EXE_memplex"))
            .args([
                "run",
                "-c",
                &configs("default.toml"),
                "--json",
                "--duration",
                seconds,
            ])
            .env("MEMPLEX_PLUGIN_PATH", build_dir())
            .env("MEMPLEX_DEVICE__INTERFACE", &net.tap)
            .env("MEMPLEX_DEVICE__ATTACH", attach.to_string());
        c
    };
    let mut first = run(&net.ns_a, "20", false)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first run has the device's queues open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ns_a = std::path::PathBuf::from(format!("/run/netns/{}", net.ns_a));
    while memplex::device::tap::readers_in(&net.tap, &ns_a).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never opened the TAP"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = run(&net.ns_a, "1", false).output().unwrap();
    let text = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("tap {}", net.tap))
            && text.contains(&format!("already read by process {}", first.id()))
            && text.contains("device.attach = true"),
        "{text}"
    );
    let shared = run(&net.ns_a, "1", true).output().unwrap();
    assert!(
        shared.status.success(),
        "attach = true shares the device: {}",
        String::from_utf8_lossy(&shared.stderr)
    );
    // A TAP of the same name in another namespace is another device: a run there is not
    // refused while the first reads its own.
    let other = TestNet::create(2).expect("a second test network");
    assert_eq!(other.tap, net.tap, "both networks name their TAP alike");
    let elsewhere = run(&other.ns_a, "1", false).output().unwrap();
    assert!(
        elsewhere.status.success(),
        "a same-named TAP in another namespace: {}",
        String::from_utf8_lossy(&elsewhere.stderr)
    );
    let _ = first.kill();
    let _ = first.wait();
}

/// One scrape of the metrics endpoint on `port`, if it answers within two seconds.
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.1 200 OK").then_some(body)
}

#[test]
fn the_metrics_endpoint_outlives_idle_clients_and_running_out_of_descriptors() {
    let port = crate::free_port();
    // 32 descriptors: a couple of dozen idle clients exhaust them, so accept fails with
    // EMFILE.
    let mut child = Command::new("prlimit")
        .args(["--nofile=32", "--"])
        .arg(env!("CARGO_BIN_EXE_memplex"))
        .args([
            "run",
            "-c",
            &configs("tcp-split.toml"),
            "--json",
            "--duration",
            "30",
        ])
        .env("MEMPLEX_DEVICE__REPEAT", "100000000")
        .env("MEMPLEX_RUNTIME__STATS_INTERVAL", "0")
        .env("MEMPLEX_RUNTIME__METRICS", format!("127.0.0.1:{port}"))
        .env("MEMPLEX_PLUGIN_PATH", build_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux)");
    let start = std::time::Instant::now();
    while scrape(port).is_none() {
        assert!(start.elapsed().as_secs() < 10, "the endpoint never came up");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A few clients that connect and say nothing are cut off by the server.
    let mut idle: Vec<_> = (0..5)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for c in &mut idle {
        use std::io::Read;
        c.set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .unwrap();
        let mut buf = [0u8; 64];
        let start = std::time::Instant::now();
        let n = c.read(&mut buf).unwrap_or(0);
        assert!(
            n == 0 || start.elapsed().as_secs() < 15,
            "an idle client was closed by the server"
        );
    }
    // A flood of them runs the endpoint out of descriptors (accept fails with EMFILE);
    // once the flood is gone it serves again, with no restart.
    let flood: Vec<_> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(1));
    drop(flood);
    drop(idle);
    let start = std::time::Instant::now();
    let body = loop {
        if let Some(body) = scrape(port) {
            break body;
        }
        assert!(
            start.elapsed().as_secs() < 15,
            "the endpoint did not recover from running out of descriptors"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(body.contains("memplex_frames_total"), "{body}");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("accept failed; retrying") && log.contains("Too many open files"),
        "the test ran the endpoint out of descriptors: {log}"
    );
}

#[test]
fn a_signal_at_any_moment_of_the_demo_leaves_no_namespace_behind() {
    if !privileged_or_skip("the demo's network needs root") {
        return;
    }
    // From before the network exists, through its set-up, to the middle of the run.
    for delay_ms in [0u64, 30, 80, 150, 300, 600, 1200, 2500] {
        let child = Command::new(env!("CARGO_BIN_EXE_memplex"))
            .args(["demo", "--seconds", "3", "--json"])
            .env("MEMPLEX_PLUGIN_PATH", build_dir())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        // A signal before main has installed its handler kills it (nothing exists yet);
        // once the network stands (the demo says so), the handler certainly was in place,
        // and the signal stops the demo, which removes what it built.
        let built = String::from_utf8_lossy(&out.stdout).contains("memplex demo: namespaces");
        assert!(
            !built || out.status.code().is_some(),
            "SIGINT after {delay_ms} ms killed it instead of stopping it: {log}"
        );
        let left: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&format!("mpx-{pid}-")))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "SIGINT after {delay_ms} ms left {left:?}: {log}"
        );
    }
}
