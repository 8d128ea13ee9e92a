//! The TOML config: what device to read, how to split, which providers exist and how
//! frames are routed to them. Loaded with the `config` crate, so any key can be
//! overridden from the environment: `MEMPLEX_DEVICE__INTERFACE=mpx1` sets
//! `device.interface` (double underscore between levels; only variables with one are
//! read, so `MEMPLEX_LOG` and `MEMPLEX_PLUGIN_PATH` stay separate).
//!
//! Every error names the key, what was wrong with it, and what is allowed.
//!
//! ```toml
//! [device]
//! kind = "pcap"               # af_packet | tap | pcap
//! path = "traffic.pcap"
//!
//! [split]
//! mode = "l4"                 # none | fixed | l2 | l3 | l4 | app
//! hds_threshold = 0
//!
//! [providers.hot]
//! plugin = "heap"
//! buf_size = 256
//!
//! [providers.bulk]
//! plugin = "slab"
//! buf_size = 2048
//! settings = { buffers = 8192 }
//!
//! [[route]]
//! match = { l4 = "tcp", dst_port = 4420 }
//! head = "hot"
//! frags = "bulk"
//!
//! [[route]]                   # no match: every frame
//! head = "hot"
//! frags = "bulk"
//! ```

mod number;

pub use crate::route::RouteConfig;
use crate::wire::SplitMode;
pub use number::check_seconds;
use number::{whole, whole_opt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A config that could not be read or makes no sense.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read or parsed, or a value has the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: String,
        /// What the parser said, with the key.
        message: String,
    },
    /// A key holds a value that is not allowed.
    #[error("{path}: `{key}` {problem}; allowed: {allowed}")]
    Invalid {
        /// The config file.
        path: String,
        /// The key, as a TOML path (`route[1].head`).
        key: String,
        /// What is wrong.
        problem: String,
        /// What would be accepted.
        allowed: String,
    },
}

/// Where frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// An AF_PACKET socket with a TPACKET_V3 ring.
    #[serde(alias = "af-packet")]
    AfPacket,
    /// A TAP device.
    Tap,
    /// A pcap or pcapng file, replayed.
    Pcap,
}

/// `[device]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// `af_packet`, `tap` or `pcap`.
    pub kind: DeviceKind,
    /// The network interface (af_packet, tap).
    pub interface: Option<String>,
    /// The capture file (pcap).
    pub path: Option<PathBuf>,
    /// Receive queues, each with its own worker and pools.
    #[serde(default = "one", deserialize_with = "whole")]
    pub queues: u16,
    /// How many times a pcap file is replayed (pcap).
    #[serde(default = "one_u32", deserialize_with = "whole")]
    pub repeat: u32,
    /// Replay at most this many frames per second, over all queues (pcap; default: as
    /// fast as the workers take them).
    #[serde(default, deserialize_with = "whole_opt")]
    pub rate: Option<u64>,
    /// TPACKET_V3 block size in bytes (af_packet).
    #[serde(default = "block_size", deserialize_with = "whole")]
    pub block_size: u32,
    /// TPACKET_V3 blocks in the ring (af_packet).
    #[serde(default = "block_count", deserialize_with = "whole")]
    pub block_count: u32,
    /// How long the kernel keeps a block that is not full before handing it over, in ms
    /// (af_packet): the latency floor at low rates. TCP's ACKs ride in such blocks, so
    /// a long timeout caps a TCP flow through memplex (10 ms gave a fifth of 1 ms).
    #[serde(default = "block_timeout_ms", deserialize_with = "whole")]
    pub block_timeout_ms: u32,
    /// Ask the kernel for GSO super-frames, with their `virtio_net_hdr` in and out (tap:
    /// IFF_VNET_HDR + TUNSETOFFLOAD; af_packet: PACKET_VNET_HDR, blocks of 128 KiB or
    /// more).
    #[serde(default)]
    pub gso: bool,
    /// tap: open the device even when another process reads it, sharing its queues
    /// (each frame then reaches only one reader). Without it such a device is refused.
    #[serde(default)]
    pub attach: bool,
}

/// The one name `[device]` goes by where routes name devices.
pub const MAIN_DEVICE: &str = "main";

/// Checks one device table (`device` or `devices.NAME`, given as `prefix`).
fn validate_device(
    prefix: &str,
    d: &DeviceConfig,
    invalid: &dyn Fn(String, String, String) -> ConfigError,
) -> Result<(), ConfigError> {
    match d.kind {
        DeviceKind::Pcap if d.path.is_none() => {
            return Err(invalid(
                format!("{prefix}.path"),
                "is missing".into(),
                "the pcap or pcapng file to replay".into(),
            ))
        }
        DeviceKind::AfPacket | DeviceKind::Tap if d.interface.is_none() => {
            return Err(invalid(
                format!("{prefix}.interface"),
                "is missing".into(),
                "a network interface name".into(),
            ))
        }
        _ => {}
    }
    if d.queues == 0 || d.queues > 64 {
        return Err(invalid(
            format!("{prefix}.queues"),
            format!("is {}", d.queues),
            "1 to 64".into(),
        ));
    }
    if d.repeat == 0 {
        return Err(invalid(
            format!("{prefix}.repeat"),
            "is 0".into(),
            "1 or more (how many times the capture is replayed)".into(),
        ));
    }
    if let Some(r) = d.rate.filter(|&r| r == 0 || r > 1_000_000_000) {
        return Err(invalid(
            format!("{prefix}.rate"),
            format!("is {r}"),
            "1 to 1000000000 frames per second (leave it out for full speed)".into(),
        ));
    }
    if d.kind == DeviceKind::AfPacket {
        if !(4096..=1 << 30).contains(&d.block_size) || !d.block_size.is_power_of_two() {
            return Err(invalid(
                format!("{prefix}.block_size"),
                format!("is {}", d.block_size),
                "a power of two from 4096 to 1073741824".into(),
            ));
        }
        if d.gso && d.block_size < crate::device::af_packet::GSO_MIN_BLOCK {
            return Err(invalid(
                format!("{prefix}.block_size"),
                format!("is {} with gso = true", d.block_size),
                format!(
                    "at least {} with gso: a 64 KiB super-frame must fit in one ring block",
                    crate::device::af_packet::GSO_MIN_BLOCK
                ),
            ));
        }
        if !(1..=1000).contains(&d.block_timeout_ms) {
            return Err(invalid(
                format!("{prefix}.block_timeout_ms"),
                format!("is {}", d.block_timeout_ms),
                "1 to 1000 ms".into(),
            ));
        }
        let ring = u64::from(d.block_size) * u64::from(d.block_count);
        if d.block_count == 0 || ring > MAX_RING {
            return Err(invalid(
                format!("{prefix}.block_count"),
                format!(
                    "is {}: a ring of {} MiB per queue",
                    d.block_count,
                    ring >> 20
                ),
                format!(
                    "1 or more, with block_size * block_count at most {} MiB per queue",
                    MAX_RING >> 20
                ),
            ));
        }
    }
    Ok(())
}

fn one() -> u16 {
    1
}
fn one_u32() -> u32 {
    1
}
fn block_size() -> u32 {
    1 << 20
}
fn block_count() -> u32 {
    16
}
fn block_timeout_ms() -> u32 {
    1
}

/// `[split]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Where frames are split.
    #[serde(default = "l4")]
    pub mode: SplitMode,
    /// The offset for `mode = "fixed"`.
    #[serde(default, deserialize_with = "whole")]
    pub fixed_offset: usize,
    /// Frames with no more payload than this are not split.
    #[serde(default, deserialize_with = "whole")]
    pub hds_threshold: usize,
}

fn l4() -> SplitMode {
    SplitMode::L4
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            mode: SplitMode::L4,
            fixed_offset: 0,
            hds_threshold: 0,
        }
    }
}

/// A scalar provider setting, passed to the provider as a string.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Scalar {
    /// `true` / `false`
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Str(s) => f.write_str(s),
        }
    }
}

/// `[providers.NAME]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// `builtin:NAME`, a path, or a name on the plugin path.
    pub plugin: String,
    /// The smallest buffer this provider must hand out.
    #[serde(deserialize_with = "whole")]
    pub buf_size: u32,
    /// Buffers the pool in front of each instance may hold; the provider's capacity
    /// defaults to twice this.
    #[serde(default = "pool_size", deserialize_with = "whole")]
    pub pool_size: u32,
    /// Where frames go when this provider faults or runs dry.
    pub fallback: Option<String>,
    /// The provider's own settings.
    #[serde(default)]
    pub settings: BTreeMap<String, Scalar>,
    /// WASM providers: the most linear memory one instance may use, in MiB (default 256).
    #[serde(default, deserialize_with = "whole_opt")]
    pub max_memory_mib: Option<u32>,
    /// WASM providers: the longest one call into the guest may run (default 100 ms).
    #[serde(default, deserialize_with = "whole_opt")]
    pub call_deadline_ms: Option<u64>,
    /// WASM providers: the most guest instances at once, one per receive queue
    /// (default 64). More queues than this is an error at start, naming the provider.
    #[serde(default, deserialize_with = "whole_opt")]
    pub max_instances: Option<u32>,
    /// Take a native provider that declares no memory region although the host reads and
    /// writes its buffers by address (its addresses then go unchecked). Refused at load
    /// without this; shown as `unverified` in `run`'s report, stats and metrics.
    #[serde(default)]
    pub unverified: bool,
}

fn pool_size() -> u32 {
    1024
}

/// What a worker does when a provider has no free buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDry {
    /// Drop the frame and count it.
    Drop,
    /// Wait (bounded by `wait_ms`) for buffers to come back, then drop.
    Wait,
}

/// Where placed frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// Count frames and bytes.
    Count,
    /// Check that head + frags reassemble to the frame as received.
    Verify,
    /// Read every placed byte for a CRC-32 per frame, summed into a digest: what an
    /// application that touches all of its data costs (`memplex consume --mode
    /// checksum` does the same in a consumer process).
    Checksum,
    /// Write the reassembled frames to a pcap file.
    Pcap,
}

/// `[runtime]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// What to do when a provider runs dry.
    #[serde(default = "on_dry")]
    pub on_dry: OnDry,
    /// The longest wait for a buffer with `on_dry = "wait"`.
    #[serde(default = "wait_ms", deserialize_with = "whole")]
    pub wait_ms: u64,
    /// The consumer.
    #[serde(default = "sink")]
    pub sink: SinkKind,
    /// The file for `sink = "pcap"`.
    pub sink_path: Option<PathBuf>,
    /// Seconds between stats lines (0: only at the end).
    #[serde(default = "stats_interval")]
    pub stats_interval: f64,
    /// Serve Prometheus metrics on this loopback address.
    pub metrics: Option<SocketAddr>,
    /// Stop after this many seconds (live devices); 0 runs until Ctrl-C.
    #[serde(default)]
    pub duration: f64,
    /// A run that dropped frames because a provider faulted (and had no fallback, or
    /// its fallback faulted too) ends with a failure exit, unless this is true.
    #[serde(default)]
    pub allow_fault_drops: bool,
    /// Time each stage of the workers (device, split, route, place, deliver, sink,
    /// recycle, ...) on one burst in 16, reported in ns per frame: `memplex bench
    /// --profile` turns it on. A few clock reads per vector of the bursts measured.
    #[serde(default)]
    pub profile: bool,
}

fn on_dry() -> OnDry {
    OnDry::Drop
}
fn wait_ms() -> u64 {
    10
}
fn sink() -> SinkKind {
    SinkKind::Count
}
fn stats_interval() -> f64 {
    1.0
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            on_dry: OnDry::Drop,
            wait_ms: 10,
            sink: SinkKind::Count,
            sink_path: None,
            stats_interval: 1.0,
            metrics: None,
            duration: 0.0,
            allow_fault_drops: false,
            profile: false,
        }
    }
}

/// The config crate writes a key below an array element as `route[0]match`; this puts
/// the dot back (`route[0].match`), so the key reads as it is written in TOML.
fn dotted_keys(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 4);
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']' && chars.peek().is_some_and(|n| n.is_ascii_alphabetic()) {
            out.push('.');
        }
    }
    out
}

/// The config crate's message for a value that is none of an enum's, which names the
/// Rust type and leaves out what is allowed ("enum WakeMode does not have variant
/// constructor busy for key `consumers.app.wake`"), said as the rest of the errors are:
/// "`consumers.app.wake` = "busy" is not known; expected one of `eventfd`, `busy_poll`".
/// Any other message is returned as it is.
fn known_values(message: &str) -> String {
    let Some(rest) = message.strip_prefix("enum ") else {
        return message.to_string();
    };
    let Some((name, rest)) = rest.split_once(" does not have variant constructor ") else {
        return message.to_string();
    };
    let Some((value, key)) = rest.rsplit_once(" for key ") else {
        return message.to_string();
    };
    // serde's own message for the value, which lists the variants.
    fn expected<T: serde::de::DeserializeOwned>(value: &str) -> Option<String> {
        let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(value);
        let e = T::deserialize(de).err()?.to_string();
        Some(e.split_once(", expected ")?.1.to_string())
    }
    let allowed = match name {
        "DeviceKind" => expected::<DeviceKind>(value),
        "OnDry" => expected::<OnDry>(value),
        "SinkKind" => expected::<SinkKind>(value),
        "DeliverPolicy" => expected::<DeliverPolicy>(value),
        "WakeMode" => expected::<WakeMode>(value),
        "SplitMode" => expected::<crate::wire::SplitMode>(value),
        _ => None,
    };
    match allowed {
        Some(allowed) => format!("{key} = \"{value}\" is not known; expected {allowed}"),
        None => message.to_string(),
    }
}

/// The largest AF_PACKET ring per queue (block_size * block_count).
const MAX_RING: u64 = 1 << 30;

/// The longest `runtime.duration`: a year, in seconds.
pub const MAX_DURATION: f64 = 31_536_000.0;

/// A whole config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where frames come from (called `main` where routes name devices).
    pub device: DeviceConfig,
    /// More devices, by name: each is read like `device`, and routes may forward to it
    /// (`forward = "NAME"`) or match the frames that came in on it (`match.device`).
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceConfig>,
    /// How frames are split.
    #[serde(default)]
    pub split: SplitConfig,
    /// Named providers.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Routing rules, first match wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Workers, consumer, stats.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Consumer processes that routes deliver to (`deliver = "NAME"`).
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerConfig>,
}

/// What the worker does when a consumer's ring is full or no consumer is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    /// Drop the frame, counted by reason (`consumer_full`, `no_consumer`).
    #[default]
    Drop,
    /// Wait up to `wait_ms` (stalling only this queue), then drop.
    Wait,
}

/// How the host offers to wake a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeMode {
    /// An eventfd per queue, written once per batch when the consumer asked for it.
    #[default]
    Eventfd,
    /// No eventfds: consumers poll their rings. (`busy-poll` too, as the command
    /// line spells it.)
    #[serde(alias = "busy-poll")]
    BusyPoll,
}

/// `[consumers.NAME]`: a consumer process reached through a Unix socket.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The SOCK_SEQPACKET socket memplex listens on (made with mode 0600, or 0660 /
    /// 0666 when the allow-lists name other groups / users).
    pub socket: PathBuf,
    /// Completion ring descriptors per queue and session (a power of two, 64 to 65536;
    /// 16 bytes each). A frame takes one per part, and a head that comes inline one more
    /// plus one per 16 of its bytes.
    #[serde(default = "ring_entries", deserialize_with = "whole")]
    pub ring_entries: u32,
    /// Refill ring entries per queue and session (a power of two; default twice
    /// `ring_entries`).
    #[serde(default, deserialize_with = "whole_opt")]
    pub refill_entries: Option<u32>,
    /// Buffers a session may hold per queue (default `ring_entries`): a consumer that
    /// sits on its buffers cannot drain a provider other routes share.
    #[serde(default, deserialize_with = "whole_opt")]
    pub quota: Option<u32>,
    /// Heads up to this many bytes go inline in the ring when the head provider's
    /// memory cannot be shared (0 to 4096, default 256).
    #[serde(default = "inline_head", deserialize_with = "whole")]
    pub inline_head: u32,
    /// Put a CRC-32 of each frame in its metadata, for consumers that verify (and ask for
    /// metadata).
    #[serde(default)]
    pub checksum: bool,
    /// `eventfd` (default) or `busy_poll`.
    #[serde(default)]
    pub wake: WakeMode,
    /// `drop` (default) or `wait` when the ring is full or nobody is connected.
    #[serde(default)]
    pub policy: DeliverPolicy,
    /// With `policy = "wait"`: how long a queue may stall, in ms (1 to 60000).
    #[serde(default = "consumer_wait_ms", deserialize_with = "whole")]
    pub wait_ms: u64,
    /// Sessions at once (several share the route's flows by flow hash; default 4).
    #[serde(default = "max_sessions", deserialize_with = "whole")]
    pub max_sessions: u32,
    /// User ids allowed to connect (SO_PEERCRED); default: memplex's own.
    #[serde(default)]
    pub allow_uids: Vec<u32>,
    /// Group ids allowed to connect.
    #[serde(default)]
    pub allow_gids: Vec<u32>,
    /// The device the consumer's transmit ring sends out of (a device name, or `in`
    /// for the device each frame's queue belongs to). Without it the consumer has no
    /// transmit ring. With it the consumer can be an inline middlebox: it forwards a
    /// frame by sending its parts, and drops it by giving them back.
    #[serde(default)]
    pub transmit: Option<String>,
    /// Transmit ring entries per queue and session (a power of two; default
    /// `ring_entries`), when `transmit` is set.
    #[serde(default, deserialize_with = "whole_opt")]
    pub transmit_entries: Option<u32>,
}

fn ring_entries() -> u32 {
    4096
}
fn inline_head() -> u32 {
    256
}
fn consumer_wait_ms() -> u64 {
    10
}
fn max_sessions() -> u32 {
    4
}

impl ConsumerConfig {
    /// A consumer on `socket` with every other key at its default, as a config that
    /// names only the socket gets.
    pub fn new(socket: PathBuf) -> ConsumerConfig {
        ConsumerConfig {
            socket,
            ring_entries: ring_entries(),
            refill_entries: None,
            quota: None,
            inline_head: inline_head(),
            checksum: false,
            wake: WakeMode::default(),
            policy: DeliverPolicy::default(),
            wait_ms: consumer_wait_ms(),
            max_sessions: max_sessions(),
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
            transmit: None,
            transmit_entries: None,
        }
    }

    /// Transmit ring entries (0 without `transmit`).
    pub fn transmit_ring(&self) -> u32 {
        match self.transmit {
            Some(_) => self.transmit_entries.unwrap_or(self.ring_entries),
            None => 0,
        }
    }

    /// Refill ring entries.
    pub fn refill(&self) -> u32 {
        self.refill_entries.unwrap_or(self.ring_entries * 2)
    }

    /// Buffers a session may hold per queue.
    pub fn quota(&self) -> u32 {
        self.quota.unwrap_or(self.ring_entries)
    }
}

impl Config {
    /// Reads `path`, applies `MEMPLEX_*__*` environment overrides, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        let env: config::Map<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("MEMPLEX_") && k.contains("__"))
            .collect();
        Self::from_toml(&text, &path.display().to_string(), env, path.parent())
    }

    /// Parses TOML text (named `origin` in errors) with the given environment overrides.
    /// Relative paths in the config are taken from `base`.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: config::Map<String, String>,
        base: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        Self::parse(text, origin, base, env, &[])
    }

    /// As [`from_toml`](Self::from_toml), with `settings` on top: `(key, value)` pairs
    /// with dotted keys (`providers.payload.plugin`, `device.queues`), the way
    /// `memplex bench --set` and `--vary` change a config.
    pub fn with_settings(
        text: &str,
        origin: &str,
        base: Option<&Path>,
        settings: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        Self::parse(text, origin, base, config::Map::new(), settings)
    }

    fn parse(
        text: &str,
        origin: &str,
        base: Option<&Path>,
        env: config::Map<String, String>,
        settings: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let parse = |e: config::ConfigError| ConfigError::Parse {
            path: origin.to_string(),
            message: dotted_keys(&known_values(&e.to_string())),
        };
        // Parsed once here first for its errors alone: they give the line, the column and
        // the text around a mistake (a number too large, a missing quote), which the
        // config crate's own parse error leaves out.
        if let Err(e) = toml::from_str::<toml::Table>(text) {
            return Err(ConfigError::Parse {
                path: origin.to_string(),
                message: e.to_string().trim_end().to_string(),
            });
        }
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("MEMPLEX")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(env)),
            );
        for (key, value) in settings {
            builder = builder.set_override(key, value.as_str()).map_err(parse)?;
        }
        let mut cfg: Config = builder
            .build()
            .map_err(parse)?
            .try_deserialize()
            .map_err(parse)?;
        if let Some(base) = base {
            for p in [&mut cfg.device.path, &mut cfg.runtime.sink_path]
                .into_iter()
                .flatten()
                .chain(cfg.consumers.values_mut().map(|c| &mut c.socket))
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// The devices, in the order routes index them: `main` (`[device]`), then each
    /// `[devices.NAME]`.
    pub fn device_names(&self) -> Vec<String> {
        std::iter::once(MAIN_DEVICE.to_string())
            .chain(self.devices.keys().cloned())
            .collect()
    }

    /// The device of index `i` (see [`device_names`](Self::device_names)).
    pub fn device_at(&self, i: usize) -> Option<&DeviceConfig> {
        match i {
            0 => Some(&self.device),
            i => self.devices.values().nth(i - 1),
        }
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, problem: String, allowed: String| ConfigError::Invalid {
            path: origin.to_string(),
            key,
            problem,
            allowed,
        };
        for (prefix, d) in std::iter::once(("device".to_string(), &self.device)).chain(
            self.devices
                .iter()
                .map(|(name, d)| (format!("devices.{name}"), d)),
        ) {
            validate_device(&prefix, d, &invalid)?;
        }
        if self.devices.contains_key(MAIN_DEVICE) || self.devices.contains_key("in") {
            return Err(invalid(
                "devices".into(),
                "has a device named `main` or `in`".into(),
                "other names: `main` is [device], and `in` means the device a frame came in on"
                    .into(),
            ));
        }
        let r = &self.runtime;
        for (key, value, zero_ok, min, max, what) in [
            (
                "runtime.stats_interval",
                r.stats_interval,
                true,
                0.01,
                86_400.0,
                "0 (only at the end) or 0.01 to 86400 seconds",
            ),
            (
                "runtime.duration",
                r.duration,
                true,
                0.001,
                MAX_DURATION,
                "0 (until Ctrl-C) or 0.001 to 31536000 seconds (a year)",
            ),
        ] {
            if let Some(problem) = check_seconds(value, zero_ok, min, max) {
                return Err(invalid(key.into(), problem, what.into()));
            }
        }
        if r.wait_ms > 60_000 {
            return Err(invalid(
                "runtime.wait_ms".into(),
                format!("is {}", r.wait_ms),
                "0 to 60000 milliseconds".into(),
            ));
        }
        if self.providers.is_empty() {
            return Err(invalid(
                "providers".into(),
                "defines no provider".into(),
                "at least one [providers.NAME] table".into(),
            ));
        }
        let names = || {
            self.providers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (name, p) in &self.providers {
            if p.buf_size == 0 || p.buf_size > 1 << 20 {
                return Err(invalid(
                    format!("providers.{name}.buf_size"),
                    format!("is {}", p.buf_size),
                    "1 to 1048576".into(),
                ));
            }
            if p.pool_size < 64 || p.pool_size > 1 << 20 {
                return Err(invalid(
                    format!("providers.{name}.pool_size"),
                    format!("is {}", p.pool_size),
                    "64 to 1048576".into(),
                ));
            }
            let limits = [
                ("max_memory_mib", p.max_memory_mib.map(u64::from), 1 << 12),
                ("call_deadline_ms", p.call_deadline_ms, 60_000),
                ("max_instances", p.max_instances.map(u64::from), 1 << 10),
            ];
            for (key, value, most) in limits {
                if let Some(v) = value.filter(|&v| v == 0 || v > most) {
                    return Err(invalid(
                        format!("providers.{name}.{key}"),
                        format!("is {v}"),
                        format!("1 to {most}"),
                    ));
                }
            }
            if let Some(f) = &p.fallback {
                if !self.providers.contains_key(f) || f == name {
                    return Err(invalid(
                        format!("providers.{name}.fallback"),
                        format!("names `{f}`"),
                        format!("another provider: {}", names()),
                    ));
                }
            }
        }
        if self.routes.is_empty() {
            return Err(invalid(
                "route".into(),
                "has no rule".into(),
                "at least one [[route]] naming head and frags providers".into(),
            ));
        }
        let names: Vec<String> = self.providers.keys().cloned().collect();
        let consumers: Vec<String> = self.consumers.keys().cloned().collect();
        crate::route::RouteTable::new(&self.routes, &names, &consumers, &self.device_names())
            .map_err(|e| {
                invalid(
                    format!("route[{}].{}", e.route, e.field),
                    format!("names {} `{}`, which is not defined", e.kind, e.name),
                    if e.known.is_empty() {
                        format!("a [{}s.NAME] table to name", e.kind)
                    } else {
                        e.known.join(", ")
                    },
                )
            })?;
        for (i, r) in self.routes.iter().enumerate() {
            if r.forward.is_some() && r.deliver.is_some() {
                return Err(invalid(
                    format!("route[{i}].forward"),
                    "is set on a route that also delivers to a consumer".into(),
                    "one of forward and deliver per route".into(),
                ));
            }
            if r.copy && r.deliver.is_none() {
                return Err(invalid(
                    format!("route[{i}].copy"),
                    "is set on a route that delivers to no consumer".into(),
                    "copy = true only with deliver = \"NAME\"".into(),
                ));
            }
            // A copied frame takes 1 + len / 16 descriptors: a GSO super-frame of up to
            // 64 KiB needs a ring of more than 4096 of them, or it is always dropped.
            let gso = (0..self.device_names().len())
                .filter_map(|d| self.device_at(d))
                .any(|d| d.gso);
            if let (true, true, Some(c)) = (
                r.copy,
                gso,
                r.deliver.as_ref().and_then(|n| self.consumers.get(n)),
            ) {
                if c.ring_entries < 8192 {
                    return Err(invalid(
                        format!("route[{i}].copy"),
                        format!(
                            "copies GSO super-frames (a device has gso = true) into a ring of {} descriptors; a 64 KiB frame takes 4097",
                            c.ring_entries
                        ),
                        "ring_entries = 8192 or more for that consumer, or gso = false".into(),
                    ));
                }
            }
        }
        for (name, c) in &self.consumers {
            let key = |k: &str| format!("consumers.{name}.{k}");
            let ring_ok = |n: u32| (64..=65536).contains(&n) && n.is_power_of_two();
            if !ring_ok(c.ring_entries) {
                return Err(invalid(
                    key("ring_entries"),
                    format!("is {}", c.ring_entries),
                    "a power of two from 64 to 65536".into(),
                ));
            }
            if !ring_ok(c.refill()) {
                return Err(invalid(
                    key("refill_entries"),
                    format!("is {}", c.refill()),
                    "a power of two from 64 to 65536".into(),
                ));
            }
            if c.quota() == 0 || c.quota() > c.refill() {
                return Err(invalid(
                    key("quota"),
                    format!(
                        "is {}, but every buffer held must fit in the refill ring of {}",
                        c.quota(),
                        c.refill()
                    ),
                    format!("1 to refill_entries ({})", c.refill()),
                ));
            }
            if let Some(to) = &c.transmit {
                if to != "in" && !self.device_names().iter().any(|d| d == to) {
                    return Err(invalid(
                        key("transmit"),
                        format!("names `{to}`, which is not a device"),
                        format!(
                            "`in` or one of the devices: {}",
                            self.device_names().join(", ")
                        ),
                    ));
                }
                if !ring_ok(c.transmit_ring()) {
                    return Err(invalid(
                        key("transmit_entries"),
                        format!("is {}", c.transmit_ring()),
                        "a power of two from 64 to 65536".into(),
                    ));
                }
            } else if c.transmit_entries.is_some() {
                return Err(invalid(
                    key("transmit_entries"),
                    "is set for a consumer without `transmit`".into(),
                    "transmit = \"DEVICE\" (or \"in\") with it, or neither".into(),
                ));
            }
            if c.inline_head > 4096 {
                return Err(invalid(
                    key("inline_head"),
                    format!("is {}", c.inline_head),
                    "0 to 4096 bytes".into(),
                ));
            }
            // Room for a few frames whose heads come inline at the largest size.
            let head_frame = 2 + c.inline_head.div_ceil(16);
            if c.ring_entries < 4 * head_frame {
                return Err(invalid(
                    key("ring_entries"),
                    format!(
                        "is {}, but a frame with a {}-byte inline head takes {head_frame} descriptors",
                        c.ring_entries, c.inline_head
                    ),
                    format!("at least {} (four such frames), or a smaller inline_head", (4 * head_frame).next_power_of_two()),
                ));
            }
            if c.wait_ms == 0 || c.wait_ms > 60_000 {
                return Err(invalid(
                    key("wait_ms"),
                    format!("is {}", c.wait_ms),
                    "1 to 60000 ms".into(),
                ));
            }
            if c.max_sessions == 0 || c.max_sessions > 64 {
                return Err(invalid(
                    key("max_sessions"),
                    format!("is {}", c.max_sessions),
                    "1 to 64".into(),
                ));
            }
            if c.socket.as_os_str().len() > 100 {
                return Err(invalid(
                    key("socket"),
                    format!("is {} bytes long", c.socket.as_os_str().len()),
                    "a path of at most 100 bytes (a Unix socket address)".into(),
                ));
            }
        }
        if self.split.mode == SplitMode::Fixed && self.split.fixed_offset == 0 {
            return Err(invalid(
                "split.fixed_offset".into(),
                "is 0 with mode = \"fixed\"".into(),
                "the byte offset to split at, 1 or more".into(),
            ));
        }
        if let Some(addr) = self.runtime.metrics {
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    "runtime.metrics".into(),
                    format!("is {addr}, not a loopback address"),
                    "127.0.0.1:PORT or [::1]:PORT".into(),
                ));
            }
        }
        if self.runtime.sink == SinkKind::Pcap && self.runtime.sink_path.is_none() {
            return Err(invalid(
                "runtime.sink_path".into(),
                "is missing for sink = \"pcap\"".into(),
                "the pcap file to write".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
