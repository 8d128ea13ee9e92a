//! The variants `memplex bench` compares (configs, or one config with a setting varied,
//! each loaded into a typed `Config`), the workloads it runs them on (frames in memory,
//! a capture, or live traffic), and the receive queues of one round.

use super::{BenchArgs, Source, Workload, BARE, DEFAULT, MEMCPY};
use anyhow::{bail, ensure, Context, Result};
use memplex::config::{Config, DeviceConfig, DeviceKind, SinkKind};
use memplex::device::replay::{self, Recorded};
use memplex::device::{self, RxQueue};
use memplex_testkit::net::TestNet;
use memplex_testkit::traffic::{self, Shape};
use std::path::Path;

/// One config variant: its label and the config, loaded with its settings applied.
pub struct Variant {
    pub label: String,
    pub config: Config,
    /// For a consumer variant: the socket its consumer process connects to.
    pub consumer: Option<std::path::PathBuf>,
}

/// The consumer's name in the configs `memplex bench --consumer` makes.
pub const BENCH_CONSUMER: &str = "bench";

/// `config` with every route delivering to a consumer named [`BENCH_CONSUMER`] on
/// `socket`: payload in place, heads inline where their provider cannot share, and
/// back-pressure (`policy = "wait"`) so the consumer's rate is what is measured.
fn delivering(config: &Config, socket: &Path, args: &BenchArgs) -> Config {
    use memplex::config::{ConsumerConfig, DeliverPolicy, WakeMode};
    let mut c = config.clone();
    for r in &mut c.routes {
        r.deliver = Some(BENCH_CONSUMER.into());
    }
    // The config's own consumers would listen on their sockets for nobody.
    c.consumers.clear();
    c.consumers.insert(
        BENCH_CONSUMER.into(),
        ConsumerConfig {
            quota: Some(1024),
            checksum: args.consumer == Some(super::ConsumerMode::Verify),
            wake: match args.wake {
                super::WakeArg::BusyPoll => WakeMode::BusyPoll,
                super::WakeArg::Eventfd => WakeMode::Eventfd,
            },
            policy: DeliverPolicy::Wait,
            wait_ms: 100,
            max_sessions: 1,
            ..ConsumerConfig::new(socket.to_path_buf())
        },
    );
    c
}

/// `--set KEY=VALUE` or one value of `--vary`, as a setting for the config loader.
fn setting(kv: &str, flag: &str) -> Result<(String, String)> {
    match kv.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => bail!("{flag} `{kv}` is not KEY=VALUE"),
    }
}

/// Every variant: each config (the built-in default when none is given), times each
/// value of `--vary`, with `--set` on all; the sink is always `count`.
pub fn variants(args: &BenchArgs) -> Result<Vec<Variant>> {
    let mut bases = Vec::new();
    if args.configs.is_empty() {
        bases.push((
            "default".to_string(),
            DEFAULT.to_string(),
            "configs/default.toml (built in)".to_string(),
            None,
        ));
    }
    for c in &args.configs {
        let text =
            std::fs::read_to_string(c).with_context(|| format!("reading {}", c.display()))?;
        let stem = c.file_stem().map_or_else(
            || c.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        bases.push((
            stem,
            text,
            c.display().to_string(),
            c.parent().map(Path::to_path_buf),
        ));
    }
    let fixed = args
        .set
        .iter()
        .map(|s| setting(s, "--set"))
        .collect::<Result<Vec<_>>>()?;
    let vary: Vec<(String, String)> = match &args.vary {
        None => vec![],
        Some(s) => {
            let Some((k, vs)) = s.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
                bail!("--vary `{s}` is not KEY=V1,V2,...");
            };
            let k = k.trim().to_string();
            let values: Vec<&str> = vs
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            ensure!(!values.is_empty(), "--vary `{s}` names no values");
            values
                .into_iter()
                .map(|v| (k.clone(), v.to_string()))
                .collect()
        }
    };
    let one = args.configs.len() <= 1;
    let mut out = Vec::new();
    for (stem, text, origin, base) in bases {
        let mut each = vec![(stem.clone(), fixed.clone())];
        if !vary.is_empty() {
            each = vary
                .iter()
                .map(|(k, v)| {
                    let label = if one {
                        v.clone()
                    } else {
                        format!("{stem} {v}")
                    };
                    let mut settings = fixed.clone();
                    settings.push((k.clone(), v.clone()));
                    (label, settings)
                })
                .collect();
        }
        for (label, settings) in each {
            let mut config = Config::with_settings(&text, &origin, base.as_deref(), &settings)
                .with_context(|| format!("config of `{label}`"))?;
            config.runtime.profile = args.profile;
            config.runtime.sink = match args.consumer {
                Some(super::ConsumerMode::Verify) => SinkKind::Verify,
                Some(super::ConsumerMode::Checksum) => SinkKind::Checksum,
                _ => SinkKind::Count,
            };
            if args.consumer.is_some() {
                let socket = std::env::temp_dir().join(format!(
                    "memplex-bench-{}-{}.sock",
                    std::process::id(),
                    out.len()
                ));
                let delivered = delivering(&config, &socket, args);
                // The in-process side keeps every frame in the process: a route of the
                // config that delivers would drop its frames, with nobody connected.
                let mut config = config;
                for r in &mut config.routes {
                    r.deliver = None;
                }
                config.consumers.clear();
                out.push(Variant {
                    label: label.clone(),
                    config,
                    consumer: None,
                });
                out.push(Variant {
                    label: format!("{label} -> consumer"),
                    config: delivered,
                    consumer: Some(socket),
                });
            } else {
                out.push(Variant {
                    label,
                    config,
                    consumer: None,
                });
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for v in &out {
        ensure!(
            v.label != BARE && v.label != MEMCPY,
            "a variant may not be called `{}`: that name is the baseline loop's",
            v.label
        );
        ensure!(
            seen.insert(v.label.clone()),
            "two variants are both called `{}`; give the configs different file names",
            v.label
        );
    }
    Ok(out)
}

/// The workloads of `args.source`: a capture, the TAP mix, or generated frames of each
/// `--frame-size`.
pub fn workloads(args: &BenchArgs) -> Result<Vec<Workload>> {
    match args.source {
        Source::Pcap => {
            let Some(c) = &args.capture else {
                bail!("--source pcap needs --capture FILE");
            };
            let frames =
                device::pcap::read_frames(c).with_context(|| format!("reading {}", c.display()))?;
            ensure!(!frames.is_empty(), "{} holds no frames", c.display());
            let name = c.file_name().map_or_else(
                || c.display().to_string(),
                |f| f.to_string_lossy().into_owned(),
            );
            Ok(vec![Workload {
                label: match args.rate {
                    Some(r) => format!("{name} at {r} fps"),
                    None => name,
                },
                frames: frames.into(),
            }])
        }
        Source::Tap => Ok(vec![Workload {
            label: "TAP GSO mix".into(),
            frames: Vec::new().into(),
        }]),
        Source::Forward => {
            bail!("--source forward has its own traffic (iperf3); see bench/forward.rs")
        }
        Source::Memory | Source::Veth => {
            ensure!(args.capture.is_none(), "--capture goes with --source pcap");
            let mut out = Vec::new();
            for &size in &args.frame_size {
                let frames = traffic::generate(Shape {
                    frame_size: size,
                    flows: args.flows,
                    proto: args.proto,
                    vlan: args.vlan,
                })
                .map_err(|e| anyhow::anyhow!("--frame-size/--flows/--vlan: {e}"))?;
                out.push(Workload {
                    label: format!(
                        "{size} B {}{}",
                        format!("{:?}", args.proto).to_lowercase(),
                        args.vlan.map_or(String::new(), |v| format!(" vlan {v}"))
                    ),
                    frames: Recorded::synthetic(frames).into(),
                });
            }
            Ok(out)
        }
    }
}

/// The receive queues of one round of `config` on workload `w`: its frames replayed
/// from memory (memory, pcap at `--rate`), or the source's device in place of the
/// config's own (veth: AF_PACKET on host B's end; tap: the mirrored TAP with GSO).
pub fn open_queues(
    config: &Config,
    w: &Workload,
    args: &BenchArgs,
    net: Option<&TestNet>,
) -> Result<Vec<Box<dyn RxQueue>>> {
    let queues = config.device.queues;
    let device = |kind, interface: String, gso| DeviceConfig {
        kind,
        interface: Some(interface),
        gso,
        ..config.device.clone()
    };
    Ok(match (args.source, net) {
        (Source::Memory | Source::Pcap, _) => {
            let rate = args.rate.filter(|_| args.source == Source::Pcap);
            device::boxed(replay::queues(
                &w.label,
                w.frames.clone(),
                queues,
                u32::MAX,
                rate,
            )?)
        }
        (Source::Veth, Some(n)) => {
            let d = device(DeviceKind::AfPacket, n.veth_b.clone(), false);
            TestNet::in_ns(&n.ns_b, || device::open(&d))??
        }
        (Source::Tap, Some(n)) => {
            let d = device(DeviceKind::Tap, n.tap.clone(), true);
            TestNet::in_ns(&n.ns_a, || device::open(&d))??
        }
        (Source::Forward, _) | (_, None) => {
            bail!("--source {:?} needs its network", args.source)
        }
    })
}
