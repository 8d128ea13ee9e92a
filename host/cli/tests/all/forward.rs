//! Forwarding: memplex as a bump in the wire between two namespaces, with real pings and
//! iperf3 TCP and UDP through it (the kernel checks every segment that arrives), and the
//! configs that cannot forward refused at start with the reason.

use crate::cli::{configs, memplex_in, privileged_or_skip};
use crate::{build_dir, so};

fn memplex(args: &[&str]) -> (i32, String) {
    memplex_in(args, &build_dir(), None, &[])
}

/// The number after `key` in `text` (`5 of 5`, `11.10 Gbit/s`), from the line holding
/// `line`.
fn number_after(text: &str, line: &str, key: &str) -> f64 {
    let l = text
        .lines()
        .find(|l| l.contains(line))
        .unwrap_or_else(|| panic!("no line with `{line}` in:\n{text}"));
    let at = l.find(key).unwrap_or_else(|| panic!("no `{key}` in `{l}`")) + key.len();
    l[at..]
        .split_whitespace()
        .next()
        .and_then(|w| {
            w.trim_matches(|c: char| !c.is_ascii_digit() && c != '.')
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no number after `{key}` in `{l}`"))
}

/// Runs `ip ARGS`, failing the test with its words when it fails.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace of the test's own (and a directory for its sockets), removed when the
/// test ends, also when it fails.
struct Netns {
    name: String,
    dir: std::path::PathBuf,
    /// TAP names of the test's own for the config's two devices: memplex refuses a TAP
    /// whose name another process reads, in whichever namespace, and tests run side by
    /// side.
    tap_a: String,
    tap_b: String,
}

impl Netns {
    fn new(what: &str) -> Netns {
        let name = format!("mpx-{}-{what}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ip(&["netns", "add", &name]);
        let tag = format!("{}{what}", std::process::id() % 100_000);
        Netns {
            name,
            dir,
            tap_a: format!("a{tag}"),
            tap_b: format!("b{tag}"),
        }
    }

    /// Starts `memplex run -c configs/CONFIG --duration SECONDS --json` inside the
    /// namespace, its devices given this net's TAP names, with `env` on top; output
    /// piped.
    fn memplex_run(
        &self,
        config: &str,
        seconds: u32,
        env: &[(&str, &std::path::Path)],
    ) -> std::process::Child {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                env!("CARGO_BIN_EXE_memplex"),
                "run",
                "-c",
            ])
            .arg(configs(config))
            .args(["--duration", &seconds.to_string(), "--json"])
            .env("MEMPLEX_DEVICE__INTERFACE", &self.tap_a)
            .env("MEMPLEX_DEVICES__B__INTERFACE", &self.tap_b)
            .env("MEMPLEX_PLUGIN_PATH", build_dir())
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn real_tcp_udp_and_pings_run_through_memplex_between_two_namespaces_over_tap() {
    if !privileged_or_skip("demo --forward builds namespaces and TAP devices") {
        return;
    }
    let out = forward_demo("tap", &[]);
    // TCP went through as GSO super-frames, whole, in many frags.
    assert!(
        number_after(&out, "memplex forwarded", "received;") > 0.0,
        "{out}"
    );
}

#[test]
fn real_tcp_udp_and_pings_run_through_memplex_between_two_namespaces_over_af_packet() {
    if !privileged_or_skip("demo --forward builds namespaces and veth pairs") {
        return;
    }
    // The hosts' veths keep their offloads and memplex's sockets take vnet headers:
    // TCP's super-frames come in whole with partial checksums and go out the same way,
    // and the far side's kernel accepts them.
    let out = forward_demo("af_packet", &[]);
    assert!(out.contains("with AF_PACKET (vnet headers"), "{out}");
    assert!(
        number_after(&out, "memplex forwarded", "received;") > 0.0,
        "{out}"
    );
    assert!(
        number_after(&out, "memplex forwarded", "largest") > 1514.0,
        "{out}"
    );
}

#[test]
fn finished_frames_run_through_memplex_over_af_packet_without_vnet_headers() {
    if !privileged_or_skip("demo --forward builds namespaces and veth pairs") {
        return;
    }
    let out = forward_demo("af_packet", &["--no-gso"]);
    assert!(out.contains("(no offloads: finished frames)"), "{out}");
    assert_eq!(
        number_after(&out, "memplex forwarded", "received;"),
        0.0,
        "{out}"
    );
    assert!(
        number_after(&out, "memplex forwarded", "largest") <= 1518.0,
        "{out}"
    );
}

/// Runs `memplex demo --forward --device DEVICE` and checks what both shapes share;
/// returns its output.
fn forward_demo(device: &str, extra: &[&str]) -> String {
    let mut args = vec!["demo", "--forward", "--device", device, "--seconds", "1"];
    args.extend_from_slice(extra);
    let (code, out) = memplex(&args);
    assert_eq!(code, 0, "{out}");
    // Both pings got every reply: ARP and neighbour discovery went through too.
    assert_eq!(out.matches("5 of 5 replies").count(), 2, "{out}");
    for line in ["TCP A -> B, IPv4", "TCP B -> A, IPv4", "TCP A -> B, IPv6"] {
        // The kernel on the far side checked each segment: bytes only arrive intact.
        assert!(number_after(&out, line, "Gbit/s,") > 0.0, "{line}: {out}");
    }
    assert!(number_after(&out, "UDP A -> B", "offered") > 0.0, "{out}");
    // Every frame that came in went out of the other device, none dropped.
    let forwarded = number_after(&out, "memplex forwarded", "forwarded");
    let received = number_after(&out, "memplex forwarded", "of");
    assert!(forwarded > 1000.0 && forwarded == received, "{out}");
    assert!(out.contains("dropped: -"), "{out}");
    // Both routes (one per direction) placed frames in both providers, and nothing leaked.
    for provider in ["hdr", "payload"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("│ {provider} ")))
            .unwrap_or_else(|| panic!("no row for {provider}:\n{out}"));
        let cells: Vec<&str> = row.split('┆').map(str::trim).collect();
        let buffers: f64 = cells[1].parse().unwrap();
        assert!(buffers >= 1000.0, "{provider}: {row}");
        assert_eq!(cells[7], "0", "{provider} leaked: {row}");
    }
    assert!(out.contains("removed the demo's namespaces"), "{out}");
    out
}

#[test]
fn config_check_shows_the_devices_and_where_each_route_forwards() {
    let (code, out) = memplex(&["config", "check", &configs("forward.toml")]);
    assert_eq!(code, 0, "{out}");
    for want in [
        "device b: Tap mpxb (2 queues)",
        "device=main",
        "out of device b",
        "out of device main",
    ] {
        assert!(out.contains(want), "`{want}` not in:\n{out}");
    }
}

#[test]
fn configs_that_cannot_forward_are_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("memplex-forward-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let capture = configs("captures/default.pcap");
    let device = format!("[device]\nkind = \"pcap\"\npath = \"{capture}\"\n");
    let slab = "[providers.p]\nplugin = \"slab\"\nbuf_size = 2048\n";
    let devmem = format!(
        "[providers.dev]\nplugin = \"{}\"\nbuf_size = 2048\nsettings = {{ buffers = 4096 }}\n",
        so("memplex_fixture_devmem").display()
    );
    let cases: [(String, &str); 10] = [
        (
            format!("{device}{slab}[devices.b]\nkind = \"tap\"\n[[route]]\nhead = \"p\"\nfrags = \"p\"\n"),
            "devices.b.interface",
        ),
        (
            format!("{device}{slab}[[route]]\nhead = \"p\"\nfrags = \"p\"\nforward = \"in\"\n"),
            "route[0] forwards to device `in`, but device `main` replays a capture and sends nothing",
        ),
        (
            format!("{device}{slab}[[route]]\nhead = \"p\"\nfrags = \"p\"\nforward = \"b\"\n"),
            "route[0].forward",
        ),
        (
            format!("{device}{slab}[[route]]\nmatch = {{ device = \"x\" }}\nhead = \"p\"\nfrags = \"p\"\n"),
            "route[0].match.device",
        ),
        (
            format!("{device}{slab}[devices.main]\nkind = \"pcap\"\npath = \"{capture}\"\n[[route]]\nhead = \"p\"\nfrags = \"p\"\n"),
            "has a device named `main` or `in`",
        ),
        (
            format!("{device}{slab}[consumers.c]\nsocket = \"{}/c.sock\"\n[[route]]\nhead = \"p\"\nfrags = \"p\"\nforward = \"in\"\ndeliver = \"c\"\n", dir.display()),
            "one of forward and deliver per route",
        ),
        (
            format!("{device}{slab}{devmem}[[route]]\nhead = \"p\"\nfrags = \"dev\"\nforward = \"in\"\n"),
            "provider `dev` keeps its memory where the host cannot read it",
        ),
        (
            format!("{device}{slab}[consumers.c]\nsocket = \"{}/c.sock\"\ntransmit = \"nowhere\"\n[[route]]\nhead = \"p\"\nfrags = \"p\"\ndeliver = \"c\"\n", dir.display()),
            "`consumers.c.transmit` names `nowhere`, which is not a device",
        ),
        (
            format!("{device}{slab}[consumers.c]\nsocket = \"{}/c.sock\"\ntransmit_entries = 1024\n[[route]]\nhead = \"p\"\nfrags = \"p\"\ndeliver = \"c\"\n", dir.display()),
            "`consumers.c.transmit_entries` is set for a consumer without `transmit`",
        ),
        (
            format!("{device}{slab}[consumers.c]\nsocket = \"{}/c.sock\"\ntransmit = \"in\"\nquota = 64\nmax_sessions = 1\n[[route]]\nhead = \"p\"\nfrags = \"p\"\ndeliver = \"c\"\n", dir.display()),
            "device `main` replays a capture and sends nothing",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, out) = memplex(&["config", "check", path.to_str().unwrap()]);
        assert_ne!(code, 0, "case {i} passed:\n{text}\n{out}");
        assert!(out.contains(want), "case {i}: `{want}` not in:\n{out}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A device that goes away mid-run (its TAP deleted): frames forwarded to it are
/// dropped as `tx_error`, the other devices' queues keep going, and the run ends with an
/// error naming the device.
#[test]
fn a_device_deleted_mid_run_is_counted_and_named() {
    if !privileged_or_skip("the test makes a namespace and TAP devices") {
        return;
    }
    let net = Netns::new("gone");
    let ns = net.name.clone();
    let (tap_a, tap_b) = (net.tap_a.as_str(), net.tap_b.as_str());
    let child = net.memplex_run("forward.toml", 4, &[]);
    // Once memplex has made both TAPs, traffic into side A's TAP (ARP for a neighbour), then
    // side B's is deleted while memplex forwards to it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::process::Command::new("ip")
        .args(["-n", &ns, "link", "show", "dev", tap_b])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "memplex never made {tap_b}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    ip(&["-n", &ns, "link", "set", "dev", tap_a, "up"]);
    ip(&["-n", &ns, "link", "set", "dev", tap_b, "up"]);
    ip(&["-n", &ns, "addr", "add", "10.80.9.1/24", "dev", tap_a]);
    ip(&["-n", &ns, "link", "del", "dev", tap_b]);
    let ping = |count: &str| {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "ping",
                "-c",
                count,
                "-i",
                "0.2",
                "-W",
                "1",
                "10.80.9.2",
            ])
            .output()
            .unwrap()
    };
    let _ = ping("5");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("reading {tap_b} q")), "{stderr}");
    // The run's report comes all the same, every queue's buffers accounted for.
    assert!(
        stderr.contains("stopped early; 0 buffers leaked"),
        "{stdout}\n{stderr}"
    );
    // The last stats line: the ARP requests from side A could not go out of side B.
    let last: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no stats line: {stdout}\n{stderr}"));
    let dropped = last["total"]["dropped"]["tx_error"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "no tx_error counted: {last}");
    assert_eq!(
        last["total"]["forwarded"]["frames"].as_u64().unwrap_or(0) + dropped,
        last["total"]["received"]["frames"].as_u64().unwrap(),
        "{last}"
    );
}

#[test]
fn bench_forward_compares_memplex_with_a_bare_forwarder_and_a_veth_pair() {
    if !privileged_or_skip("bench --source forward builds namespaces and TAP devices") {
        return;
    }
    let json = std::env::temp_dir().join(format!("memplex-bench-fwd-{}.json", std::process::id()));
    let (code, out) = memplex(&[
        "bench",
        "--source",
        "forward",
        "--repeats",
        "1",
        "--seconds",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    // Two traffics times three variants, each measured, with its ratios to both baselines.
    assert_eq!(rows.len(), 6, "{rows:?}");
    for r in rows {
        assert!(r["rate"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["of_bare"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["of_veth"].as_f64().unwrap() > 0.0, "{r}");
        let cpu = &r["rounds"][0]["cpu_ns_per_kib"];
        match r["variant"].as_str().unwrap() {
            "bare" => assert_eq!(r["of_bare"].as_f64(), Some(1.0), "{r}"),
            "veth" => {
                assert_eq!(r["of_veth"].as_f64(), Some(1.0), "{r}");
                assert!(
                    cpu.is_null(),
                    "memplex spends nothing on the veth pair: {r}"
                );
            }
            "forward" => assert!(cpu.as_f64().unwrap() > 0.0, "{r}"),
            other => panic!("unexpected variant {other}"),
        }
    }
    assert!(
        out.contains("x bare") && out.contains("CPU ns/KiB"),
        "{out}"
    );
    std::fs::remove_file(&json).unwrap();
}

#[test]
fn a_consumer_process_is_an_inline_middlebox_for_real_tcp() {
    if !privileged_or_skip("demo --forward --middlebox builds namespaces and TAP devices") {
        return;
    }
    // configs/middlebox.toml: each direction is delivered to a `memplex consume
    // --forward`, whose verdicts send every frame on through its transmit ring.
    let (code, out) = memplex(&["demo", "--forward", "--middlebox", "--seconds", "1"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("5 of 5 replies").count(), 2, "{out}");
    for line in ["TCP A -> B, IPv4", "TCP B -> A, IPv4", "TCP A -> B, IPv6"] {
        assert!(number_after(&out, line, "Gbit/s,") > 0.0, "{line}: {out}");
    }
    for consumer in ["ab", "ba"] {
        let line = format!("consumer process `{consumer}`: verdicts:");
        assert!(number_after(&out, &line, "verdicts:") > 100.0, "{out}");
        assert_eq!(number_after(&out, &line, "ring,"), 0.0, "{out}");
    }
    // What the consumers sent on went out from memplex's buffers, GSO super-frames
    // whole; frames before the consumers connected may have dropped as no_consumer.
    let sent = number_after(
        &out,
        "memplex sent, on its consumers' verdicts,",
        "verdicts,",
    );
    let received = number_after(&out, "memplex sent, on its consumers' verdicts,", "of");
    assert!(sent > 1000.0 && received - sent < 50.0, "{out}");
    assert!(
        number_after(&out, "memplex sent", "received;") > 0.0,
        "no GSO super-frame: {out}"
    );
    for provider in ["hdr", "payload"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("│ {provider} ")))
            .unwrap_or_else(|| panic!("no row for {provider}:\n{out}"));
        let cells: Vec<&str> = row.split('┆').map(str::trim).collect();
        assert_eq!(cells[7], "0", "{provider} leaked: {row}");
    }
}

/// A consumer that writes transmit entries it has no right to: a forged token, bytes
/// past its buffer, an entry of no parts. Each session ends with the reason, the host
/// takes its buffers back, and a well-behaved middlebox after them still sends frames on.
#[test]
fn hostile_transmit_entries_end_the_session_and_the_host_is_unaffected() {
    if !privileged_or_skip("the test makes a namespace and TAP devices") {
        return;
    }
    let net = Netns::new("mbx");
    let (ns, dir) = (net.name.clone(), net.dir.clone());
    let (tap_a, tap_b) = (net.tap_a.as_str(), net.tap_b.as_str());
    let sock = |name: &str| dir.join(format!("{name}.sock"));
    let (ab, ba) = (sock("ab"), sock("ba"));
    let child = net.memplex_run(
        "middlebox.toml",
        12,
        &[
            ("MEMPLEX_CONSUMERS__AB__SOCKET", &ab),
            ("MEMPLEX_CONSUMERS__BA__SOCKET", &ba),
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut child = child;
    while !sock("ab").exists() {
        if std::time::Instant::now() >= deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "memplex never made its consumer socket: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Pings from side A's TAP to a neighbour that is only an entry: ICMP frames every
    // 50 ms into it, delivered to consumer `ab`, whose verdicts go out of side B's.
    ip(&["-n", &ns, "link", "set", "dev", tap_a, "up"]);
    ip(&["-n", &ns, "link", "set", "dev", tap_b, "up"]);
    ip(&["-n", &ns, "addr", "add", "10.80.9.1/24", "dev", tap_a]);
    ip(&[
        "-n",
        &ns,
        "neigh",
        "add",
        "10.80.9.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        tap_a,
    ]);
    let mut ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "ping",
            "-q",
            "-c",
            "200",
            "-i",
            "0.05",
            "10.80.9.2",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let misbehave = build_dir().join("examples/misbehave");
    for (mode, reason) in [
        ("tx-forged-token", "ended 3 "),
        ("tx-out-of-range", "ended 6 a transmit entry"),
        ("tx-no-parts", "ended 6 a transmit entry"),
    ] {
        let out = std::process::Command::new(&misbehave)
            .args([sock("ab").to_str().unwrap(), mode])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(reason), "{mode}: {text}");
    }
    // A middlebox that follows the rules: its verdicts send frames on, or (every
    // second frame) drop them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args([
            "consume",
            "--forward",
            "--drop-every",
            "2",
            "--frames",
            "40",
            "--json",
            "--socket",
        ])
        .arg(sock("ab"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(got["forwarded"].as_u64(), Some(20), "{got}");
    assert_eq!(got["verdict_dropped"].as_u64(), Some(20), "{got}");
    let _ = ping.kill();
    let _ = ping.wait();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let last: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no report: {stdout}\n{stderr}"));
    let ab = last["total"]["consumers"]
        .as_array()
        .and_then(|v| v.iter().find(|c| c["name"] == "ab"))
        .unwrap_or_else(|| panic!("no consumer ab: {last}"))
        .clone();
    // Ends are counted per queue a session had a channel on (all four: two devices of
    // two queues each): one forged token, two bad entries, one that left politely.
    let ends = |why: &str| ab["disconnects"][why].as_u64().unwrap_or(0);
    assert_eq!(ab["sessions_started"].as_u64(), Some(16), "{ab}");
    assert_eq!(ends("bad_token"), 4, "{ab}");
    assert_eq!(ends("bad_entry"), 8, "{ab}");
    assert_eq!(ends("left"), 4, "{ab}");
    assert!(ab["transmitted"].as_u64().unwrap_or(0) >= 20, "{ab}");
    assert_eq!(ab["tx_refused"].as_u64(), Some(0), "{ab}");
    assert_eq!(ab["lent"].as_u64(), Some(0), "{ab}");
    for p in last["total"]["providers"].as_array().unwrap() {
        assert_eq!(p["leaked"].as_u64(), Some(0), "{p}");
    }
}
