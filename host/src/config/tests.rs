//! Config parsing and validation: good configs load, every bad one names its key.

use super::*;

const GOOD: &str = r#"
[device]
kind = "pcap"
path = "t.pcap"

[split]
mode = "app"

[providers.Hot]
plugin = "heap"
buf_size = 256

[providers.bulk]
plugin = "slab"
buf_size = 2048
settings = { buffers = 8192, mode = "x" }

[[route]]
match = { l4 = "tcp", dst_port = "4420-4421", dst = "10.0.0.0/8" }
head = "Hot"
frags = "bulk"

[[route]]
head = "Hot"
frags = "bulk"
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_toml(text, "test.toml", env, Some(Path::new("/base")))
}

fn err(text: &str) -> String {
    load(text, &[]).unwrap_err().to_string()
}

#[test]
fn loads_a_good_config() {
    let c = load(GOOD, &[]).unwrap();
    assert_eq!(c.split.mode, SplitMode::App);
    assert_eq!(c.device.path.as_deref(), Some(Path::new("/base/t.pcap")));
    assert_eq!(c.providers["bulk"].settings["buffers"], Scalar::Int(8192));
    assert_eq!(
        c.routes[0].matches.to_string(),
        "dst=10.0.0.0/8 dst_port=4420-4421 l4=tcp"
    );
    assert!(
        c.providers.contains_key("Hot"),
        "provider names keep their case"
    );
}

#[test]
fn settings_override_any_key() {
    let set = |k: &str, v: &str| (k.to_string(), v.to_string());
    let c = Config::with_settings(
        GOOD,
        "test.toml",
        None,
        &[
            set("device.queues", "3"),
            set("providers.bulk.plugin", "slab.wasm"),
        ],
    )
    .unwrap();
    assert_eq!(c.device.queues, 3);
    assert_eq!(c.providers["bulk"].plugin, "slab.wasm");
    let e = Config::with_settings(GOOD, "test.toml", None, &[set("device.queues", "x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("queues"), "{e}");
}

#[test]
fn environment_overrides_any_key() {
    let c = load(
        GOOD,
        &[
            ("MEMPLEX_DEVICE__QUEUES", "4"),
            ("MEMPLEX_SPLIT__MODE", "l3"),
        ],
    )
    .unwrap();
    assert_eq!((c.device.queues, c.split.mode), (4, SplitMode::L3));
}

#[test]
fn errors_name_the_key() {
    let e = err(&GOOD.replace("mode = \"app\"", "mode = \"l5\""));
    assert!(e.contains("l5") && e.contains("split.mode"), "{e}");
    let e = err(&GOOD.replace("kind = \"pcap\"", "kind = \"pcap\"\nintrface = \"x\""));
    assert!(e.contains("intrface"), "{e}");
    let e = err(&GOOD
        .replace(
            "head = \"Hot\"\nfrags = \"bulk\"\n\"#",
            "head = \"hott\"\nfrags = \"bulk\"\n\"#",
        )
        .replace("[[route]]\nhead = \"Hot\"", "[[route]]\nhead = \"hott\""));
    assert!(
        e.contains("route[1].head") && e.contains("hott") && e.contains("Hot, bulk"),
        "{e}"
    );
    let e = err(&GOOD.replace("l4 = \"tcp\"", "l4 = \"sctpx\""));
    assert!(
        e.contains("route[0].match") && e.contains("`match.l4`") && e.contains("tcp, udp"),
        "{e}"
    );
    let e = err(&GOOD.replace("dst_port = \"4420-4421\"", "dst_port = \"9-1\""));
    assert!(e.contains("9-1"), "{e}");
    let e = err(&GOOD.replace("buf_size = 256", "buf_size = \"big\""));
    assert!(e.contains("buf_size"), "{e}");
    let e = err(&GOOD.replace("path = \"t.pcap\"", ""));
    assert!(e.contains("device.path") && e.contains("missing"), "{e}");
    let e = err(&GOOD.replace("[split]", "[runtime]\nmetrics = \"0.0.0.0:9100\"\n[split]"));
    assert!(
        e.contains("runtime.metrics") && e.contains("loopback"),
        "{e}"
    );
}

#[test]
fn every_number_is_checked_and_its_key_named() {
    for (edit, key, want) in [
        (
            "buf_size = 256",
            "buf_size = 2048.5",
            "providers.Hot.buf_size",
        ),
        ("buf_size = 256", "buf_size = 1e3", "providers.Hot.buf_size"),
        (
            "buf_size = 256",
            "buf_size = 99999999999",
            "providers.Hot.buf_size",
        ),
        (
            "[split]",
            "[runtime]\nstats_interval = nan\n[split]",
            "runtime.stats_interval",
        ),
        (
            "[split]",
            "[runtime]\nstats_interval = 1e-310\n[split]",
            "runtime.stats_interval",
        ),
        (
            "[split]",
            "[runtime]\nstats_interval = -1.0\n[split]",
            "runtime.stats_interval",
        ),
        (
            "[split]",
            "[runtime]\nduration = inf\n[split]",
            "runtime.duration",
        ),
        (
            "[split]",
            "[runtime]\nduration = 1e300\n[split]",
            "runtime.duration",
        ),
        (
            "[split]",
            "[runtime]\nwait_ms = 1e3\n[split]",
            "runtime.wait_ms",
        ),
        (
            "[split]",
            "[runtime]\nwait_ms = 3600000\n[split]",
            "runtime.wait_ms",
        ),
        (
            "path = \"t.pcap\"",
            "path = \"t.pcap\"\nrate = 0",
            "device.rate",
        ),
        (
            "path = \"t.pcap\"",
            "path = \"t.pcap\"\nrepeat = 0",
            "device.repeat",
        ),
        (
            "path = \"t.pcap\"",
            "path = \"t.pcap\"\nqueues = 2.0",
            "device.queues",
        ),
        (
            "kind = \"pcap\"\npath = \"t.pcap\"",
            "kind = \"af_packet\"\ninterface = \"x\"\nblock_size = 1073741824\nblock_count = 64",
            "device.block_count",
        ),
        (
            "kind = \"pcap\"\npath = \"t.pcap\"",
            "kind = \"af_packet\"\ninterface = \"x\"\nblock_size = 5000",
            "device.block_size",
        ),
        (
            "kind = \"pcap\"\npath = \"t.pcap\"",
            "kind = \"af_packet\"\ninterface = \"x\"\nblock_size = 65536\ngso = true",
            "`device.block_size` is 65536 with gso = true; allowed: at least 131072",
        ),
        (
            "kind = \"pcap\"\npath = \"t.pcap\"",
            "kind = \"af_packet\"\ninterface = \"x\"\nblock_timeout_ms = 0",
            "device.block_timeout_ms",
        ),
    ] {
        let e = err(&GOOD.replacen(edit, key, 1));
        assert!(e.contains(want), "{key}: {e}");
    }
    // A number too large for TOML itself: the line and column are given.
    let e = err(&GOOD.replace("buf_size = 256", "buf_size = 99999999999999999999"));
    assert!(e.contains("line") && e.contains("buf_size"), "{e}");
    // Environment overrides arrive as text and are held to the same rules.
    let e = load(GOOD, &[("MEMPLEX_PROVIDERS__BULK__POOL_SIZE", "2048.5")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("pool_size") && e.contains("whole number"), "{e}");
}

#[test]
fn a_copy_route_of_gso_super_frames_needs_a_ring_they_fit_in() {
    let config = |gso: bool, ring: u32| {
        format!(
            "[device]\nkind = \"tap\"\ninterface = \"mpx0\"\ngso = {gso}\n\n[providers.h]\nplugin = \"heap\"\nbuf_size = 2048\n\n[consumers.c]\nsocket = \"/tmp/c.sock\"\nring_entries = {ring}\n\n[[route]]\nhead = \"h\"\nfrags = \"h\"\ndeliver = \"c\"\ncopy = true\n"
        )
    };
    let e = err(&config(true, 4096));
    assert!(
        e.contains("route[0].copy")
            && e.contains("a 64 KiB frame takes 4097")
            && e.contains("ring_entries = 8192 or more"),
        "{e}"
    );
    load(&config(true, 8192), &[]).unwrap();
    load(&config(false, 4096), &[]).unwrap();
}

#[test]
fn a_value_no_enum_has_is_named_with_its_key_and_the_values_allowed() {
    let with = |from: &str, to: &str| err(&GOOD.replace(from, to));
    assert_eq!(
        with("mode = \"app\"", "mode = \"l5\""),
        "test.toml: `split.mode` = \"l5\" is not known; expected one of `none`, `fixed`, `l2`, `l3`, `l4`, `app`"
    );
    assert_eq!(
        with("kind = \"pcap\"", "kind = \"netmap\""),
        "test.toml: `device.kind` = \"netmap\" is not known; expected one of `af-packet`, `af_packet`, `tap`, `pcap`"
    );
    let consumer = |line: &str| {
        err(&format!(
            "{GOOD}\n[consumers.app]\nsocket = \"/tmp/a.sock\"\n{line}\n"
        ))
    };
    assert_eq!(
        consumer("policy = \"block\""),
        "test.toml: `consumers.app.policy` = \"block\" is not known; expected `drop` or `wait`"
    );
    assert!(
        consumer("wake = \"spin\"").ends_with("`eventfd`, `busy-poll`, `busy_poll`"),
        "{}",
        consumer("wake = \"spin\"")
    );
    // Every enum the message knows is still called what it was.
    for name in [
        "DeviceKind",
        "OnDry",
        "SinkKind",
        "DeliverPolicy",
        "WakeMode",
        "SplitMode",
    ] {
        let m = known_values(&format!(
            "enum {name} does not have variant constructor zz for key `k`"
        ));
        assert!(
            m.starts_with("`k` = \"zz\" is not known; expected "),
            "{name}: {m}"
        );
    }
    // Anything else goes through as it was.
    assert_eq!(known_values("invalid type: string"), "invalid type: string");
}

#[test]
fn the_command_line_spellings_of_wake_and_kind_are_accepted() {
    let c = load(
        &format!("{GOOD}\n[consumers.app]\nsocket = \"/tmp/a.sock\"\nwake = \"busy-poll\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(c.consumers["app"].wake, WakeMode::BusyPoll);
    let c = load(
        &GOOD.replace(
            "kind = \"pcap\"\npath = \"t.pcap\"",
            "kind = \"af-packet\"\ninterface = \"eth0\"",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(c.device.kind, DeviceKind::AfPacket);
}
