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
