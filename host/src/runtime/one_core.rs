//! A worker that delivers, driven by hand with its consumer in the same thread: the
//! delivery path end to end (split, place, lend, stage, publish, read, give back, take
//! back) without a socket, a second process or a second core.
//!
//! It is a test (every frame delivered and checked, every buffer back) and two
//! measurements:
//!
//! - `MEMPLEX_ONE_CORE_ROUNDS=300 cargo test --release -p memplex --lib one_core --
//!   --nocapture` prints the worker's ns per frame delivering against the same worker
//!   with an in-process count sink, alternating, medians of 7. Nothing crosses cores
//!   here, so the gap is the host's own work per frame; against `memplex bench
//!   --consumer count`'s ratio on two cores it says how much of that gap is lines shared
//!   between cores (docs/delivery.md, "Cost").
//! - `cargo xtask instructions` runs one [`WORKLOADS`] entry at a time
//!   (`MEMPLEX_WORKLOAD`) under callgrind, counting only inside [`measured_burst`]: the
//!   instructions the worker executes per frame, exactly, run after run. On a CPU that
//!   retires about five instructions a cycle, as the AMD EPYC VM of family 26 does on
//!   this path, that count is most of the time per frame (less so for instructions the
//!   core runs beside others: docs/delivery.md, "Cost"), and unlike the time it does
//!   not move with the machine's noise.

use super::hostile::{open_session, received};
use super::{CountSink, Engine};
use crate::config::Config;
use crate::deliver::Inbox;
use crate::device::RxFrame;
use crate::provider::PluginPath;
use crate::stats::DropReason;
use memplex_proto::layout::{self, Desc, RingKind};
use memplex_proto::ring::{Consumer, Producer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zerocopy::IntoBytes;

/// Heads on the heap (inline when delivered), payload in shared memory: the pair
/// `memplex bench configs/deliver.toml --consumer count` compares.
const DELIVER: &str = r#"
[device]
kind = "pcap"
path = "(in memory)"

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
settings = { buffers = 16384 }

[consumers.app]
socket = "/nonexistent/one-core.sock"
ring_entries = 4096
quota = 2048
policy = "drop"

[[route]]
head = "hdr"
frags = "payload"
"#;

/// `configs/tcp-split.toml` in memory with the count sink: TCP splits into a heap head
/// and a slab payload.
const TCP_SPLIT: &str = r#"
[device]
kind = "pcap"
path = "(in memory)"

[split]
mode = "l4"
hds_threshold = 64

[providers.hdr]
plugin = "builtin:heap"
buf_size = 256
unverified = true

[providers.payload]
plugin = "builtin:slab"
buf_size = 2048
pool_size = 2048

[[route]]
match = { l4 = "tcp" }
head = "hdr"
frags = "payload"

[[route]]
head = "hdr"
frags = "hdr"
"#;

/// What a workload's frames are.
#[derive(Clone, Copy)]
enum Traffic {
    /// 4096 flows of frames of this size, TCP or UDP ([`frames_of`]).
    Generated { size: usize, tcp: bool },
    /// The demo's capture, `configs/captures/default.pcap`: the mix of `memplex bench
    /// configs/default.toml --source pcap` (TCP and UDP over IPv4 and IPv6, tagged
    /// frames, ICMP, ARP, tunnels, GSO super-frames), in mixed vectors.
    DemoCapture,
}

/// `configs/default.toml` with its providers built in (the same code as their `.so`s)
/// and its device in memory; the sink is the count sink, as the harness's.
fn demo_config() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/default.toml");
    let text = std::fs::read_to_string(path).expect("configs/default.toml");
    let built_in = text
        .replace("plugin = \"heap\"", "plugin = \"builtin:heap\"")
        .replace("plugin = \"slab\"", "plugin = \"builtin:slab\"")
        .replace("plugin = \"hugepage\"", "plugin = \"builtin:hugepage\"")
        .replace("kind = \"tap\"", "kind = \"pcap\"\npath = \"(in memory)\"");
    assert_eq!(built_in.matches("builtin:").count(), 3, "{built_in}");
    built_in
}

/// What `cargo xtask instructions` counts: name, config (`None`: the demo's),
/// delivering, traffic. (`xtask/src/main.rs` lists the names too; a name only one side
/// knows fails loudly.)
const WORKLOADS: [(&str, Option<&str>, bool, Traffic); 7] = [
    ("count-64", Some(DELIVER), false, gen(64, false)),
    ("deliver-64", Some(DELIVER), true, gen(64, false)),
    ("count-1500", Some(DELIVER), false, gen(1500, false)),
    ("deliver-1500", Some(DELIVER), true, gen(1500, false)),
    ("tcp-split-128", Some(TCP_SPLIT), false, gen(128, true)),
    ("tcp-split-1500", Some(TCP_SPLIT), false, gen(1500, true)),
    ("demo-mix", None, false, Traffic::DemoCapture),
];

const fn gen(size: usize, tcp: bool) -> Traffic {
    Traffic::Generated { size, tcp }
}

/// The consumer's end, in this thread: reads each frame's descriptors, checks them
/// against the frame, and gives its tokens back in batches of 128.
struct Reader {
    completion: Consumer,
    refill: Producer,
    tokens: Vec<u64>,
    frames: u64,
    /// Parts read (tokens to give back).
    parts: u64,
}

impl Reader {
    fn read(&mut self, sent: &[RxFrame<'_>], check: bool) {
        let avail = self.completion.available().expect("an honest host");
        let mut i = 0;
        let mut inline = [0u8; 256];
        while i < avail {
            let frame = sent[self.frames as usize % sent.len()].data;
            let mut seen = 0;
            loop {
                let d: Desc = self.completion.read(i);
                i += 1;
                if d.is_inline() {
                    let len = d.len() as usize;
                    self.completion.read_bytes(i, &mut inline[..len]);
                    i += layout::inline_slots(len) as u32;
                    if check {
                        assert_eq!(seen, 0, "inline bytes first");
                        assert_eq!(&inline[..len], &frame[..len], "frame {}", self.frames);
                    }
                    seen += len;
                } else {
                    assert_ne!(d.token, 0, "a part has a token");
                    self.tokens.push(d.token);
                    self.parts += 1;
                    seen += d.len() as usize;
                }
                if !d.more() {
                    break;
                }
            }
            if check {
                assert_eq!(seen, frame.len(), "frame {}", self.frames);
            }
            self.frames += 1;
        }
        self.completion.release(avail);
    }

    fn give_back(&mut self, at_least: usize) {
        if self.tokens.len() >= at_least && !self.tokens.is_empty() {
            let n = self.tokens.len() as u32;
            assert!(self.refill.has_room(0, n).expect("an honest host"));
            self.refill.write_staged(0, self.tokens.as_bytes());
            self.refill.publish(n);
            self.tokens.clear();
        }
    }
}

/// Runs `rounds` passes over `frames` through one worker, delivering (with the reader
/// above) or to the count sink; the worker's ns per frame (the reader's time left out).
fn run(config: &str, deliver: bool, frames: &[Vec<u8>], rounds: usize, check: bool) -> f64 {
    let text = if deliver {
        config.replace(
            "frags = \"payload\"\n",
            "frags = \"payload\"\ndeliver = \"app\"\n",
        )
    } else {
        config.to_string()
    };
    let config = Config::from_toml(&text, "one core", Default::default(), None).expect("valid");
    let engine = Engine::new(config, &PluginPath::from_env()).expect("built-in providers");
    let inbox = Arc::new(Inbox::default());
    let mut worker = engine
        .test_worker(Box::new(CountSink), deliver.then(|| Arc::clone(&inbox)))
        .expect("a worker");
    let mut reader = None;
    if deliver {
        let (_, map, theirs) = open_session(&inbox, 4096, false, 0);
        reader = Some((
            Reader {
                completion: Consumer::new(map.ring(RingKind::Completion)),
                refill: Producer::new(map.ring(RingKind::Refill)),
                tokens: Vec::with_capacity(256),
                frames: 0,
                parts: 0,
            },
            theirs,
        ));
    }
    let rx = received(frames);
    worker.service();
    let (mut spent, mut sent) = (Duration::ZERO, 0u64);
    for _ in 0..rounds {
        for burst in rx.chunks(32) {
            let t = Instant::now();
            measured_burst(&mut worker, burst);
            spent += t.elapsed();
            sent += burst.len() as u64;
            if let Some((r, _)) = reader.as_mut() {
                r.read(&rx, check);
                r.give_back(128);
            }
        }
    }
    assert_eq!(worker.stats.dropped.sum(), 0, "no frame dropped");
    if let Some((mut r, _)) = reader {
        r.give_back(1);
        worker.service();
        assert_eq!(r.frames, sent, "every frame delivered");
        let stats = worker.delivery.as_ref().expect("delivering").stats();
        let c = &stats[0].counters;
        assert!(r.parts >= sent, "a part at least per frame");
        assert_eq!(
            (c.frames, c.returned, c.lent),
            (sent, r.parts, 0),
            "every buffer back"
        );
    } else {
        let placed: u64 = worker.stats.routes.iter().map(|r| r.frames).sum();
        assert_eq!(placed, sent, "every frame placed");
    }
    spent.as_nanos() as f64 / sent as f64
}

/// What the worker does for one burst, as it would between two polls of its device:
/// handle it, then take back what consumers returned. Out of line, so that callgrind
/// can count inside it alone.
#[inline(never)]
fn measured_burst(worker: &mut super::worker::Worker, burst: &[RxFrame<'_>]) {
    worker.handle(burst);
    worker.service();
}

/// 4096 flows of `size`-byte frames.
fn frames_of(size: usize, tcp: bool) -> Vec<Vec<u8>> {
    use memplex_testkit::traffic::Proto;
    memplex_testkit::traffic::generate(memplex_testkit::traffic::Shape {
        frame_size: size,
        flows: 4096,
        proto: if tcp { Proto::Tcp } else { Proto::Udp },
        vlan: None,
    })
    .expect("frames of a valid size")
}

/// Every workload runs clean (all frames placed or delivered and checked); with
/// `MEMPLEX_WORKLOAD` set, only that one, for `MEMPLEX_ROUNDS` passes (default 20) over
/// 4096 of its frames or more (its frames again and again), then the frame count for
/// `cargo xtask instructions`.
#[test]
fn workloads() {
    let only = std::env::var("MEMPLEX_WORKLOAD").ok();
    let rounds: usize = std::env::var("MEMPLEX_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    if let Some(name) = &only {
        assert!(
            WORKLOADS.iter().any(|w| w.0 == name),
            "no workload {name}: {:?}",
            WORKLOADS.map(|w| w.0)
        );
    }
    for (name, config, deliver, traffic) in WORKLOADS {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let frames = match traffic {
            Traffic::Generated { size, tcp } => frames_of(size, tcp),
            Traffic::DemoCapture => {
                let path = concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../configs/captures/default.pcap"
                );
                crate::device::pcap::read_frames(path.as_ref())
                    .expect("the demo's capture")
                    .into_iter()
                    .map(|r| r.data.into_vec())
                    .collect()
            }
        };
        let config = config.map_or_else(demo_config, str::to_string);
        // As many frames a pass as the generated workloads' 4096 (the capture holds
        // 300): the first pass's cache fills, from the providers, are as small a share.
        let rounds = match only.is_some() {
            true => rounds * 4096usize.div_ceil(frames.len()),
            false => 1,
        };
        run(&config, deliver, &frames, rounds, true);
        println!("workload {name}: frames {}", frames.len() * rounds);
    }
}

/// Every frame delivered, its head inline and equal to the frame's, its payload lent
/// once; every buffer given back and taken back.
#[test]
fn one_core_delivery_lends_every_payload_and_takes_every_buffer_back() {
    let frames = frames_of(64, false);
    run(DELIVER, true, &frames, 2, true);
    let rounds: usize = std::env::var("MEMPLEX_ONE_CORE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if rounds == 0 {
        return;
    }
    let (mut sink, mut delivering) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        sink.push(run(DELIVER, false, &frames, rounds, false));
        delivering.push(run(DELIVER, true, &frames, rounds, false));
    }
    sink.sort_by(f64::total_cmp);
    delivering.sort_by(f64::total_cmp);
    println!(
        "64 B UDP, one core, medians of 7: count sink {:.1} ns/frame, delivering {:.1} ns/frame, ratio {:.2}",
        sink[3],
        delivering[3],
        sink[3] / delivering[3]
    );
}

/// Frames of several parts (1500 B into 512 B payload buffers: a head inline, then three
/// parts): every descriptor chain ends where its frame does, and every buffer comes back.
#[test]
fn one_core_delivery_lends_every_part_of_frames_of_several_parts() {
    let frames = frames_of(1500, false);
    let config = DELIVER.replace("buf_size = 2048", "buf_size = 512");
    assert_ne!(config, DELIVER);
    run(&config, true, &frames, 2, true);
}

/// What a consumer saw of one frame: its inline bytes, the length of each lent part,
/// its metadata entry's bytes (empty without metadata), and each part's region and
/// offset.
type Entry = (Vec<u8>, Vec<u32>, Vec<u8>, Vec<(u16, u64)>);

/// Runs `frames` (in bursts of 32) through a worker of `config` whose consumer reads in
/// this thread (with a metadata ring when `meta`), with
/// [`QueueDelivery::place_and_lend`](crate::deliver::QueueDelivery) on (`lanes`) or off:
/// every entry the consumer saw, in order, the worker's route, provider, drop and
/// delivery counters, and the frames the one-pass path took.
fn entries_of(
    config: &str,
    frames: &[Vec<u8>],
    lanes: bool,
    meta: bool,
) -> (Vec<Entry>, String, u64) {
    let config = Config::from_toml(config, "one core", Default::default(), None).expect("valid");
    let engine = Engine::new(config, &PluginPath::from_env()).expect("built-in providers");
    let inbox = Arc::new(Inbox::default());
    let mut worker = engine
        .test_worker(Box::new(CountSink), Some(Arc::clone(&inbox)))
        .expect("a worker");
    if !lanes {
        worker.lanes = crate::deliver::Lanes::default();
    }
    let (_, map, _theirs) = open_session(&inbox, 4096, meta, 0);
    let mut completion = Consumer::new(map.ring(RingKind::Completion));
    let mut metadata = meta.then(|| Consumer::new(map.ring(RingKind::Meta)));
    let mut refill = Producer::new(map.ring(RingKind::Refill));
    let rx = received(frames);
    worker.service();
    let mut entries: Vec<Entry> = Vec::new();
    let mut tokens: Vec<u64> = Vec::new();
    for burst in rx.chunks(32) {
        worker.handle(burst);
        worker.service();
        let avail = completion.available().expect("an honest host");
        let mut i = 0;
        while i < avail {
            let mut entry: Entry = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            loop {
                let d: Desc = completion.read(i);
                i += 1;
                if d.is_inline() {
                    let len = d.len() as usize;
                    entry.0.resize(len, 0);
                    completion.read_bytes(i, &mut entry.0);
                    i += layout::inline_slots(len) as u32;
                } else {
                    tokens.push(d.token);
                    entry.1.push(d.len());
                    entry
                        .3
                        .push((layout::Token::from_u64(d.token).region, d.offset()));
                }
                if !d.more() {
                    break;
                }
            }
            if let Some(m) = metadata.as_mut() {
                let e: layout::FrameMeta = m.read(0);
                m.release(1);
                entry.2 = e.as_bytes().to_vec();
            }
            entries.push(entry);
        }
        completion.release(avail);
        let n = tokens.len() as u32;
        assert!(refill.has_room(0, n).expect("an honest host"));
        refill.write_staged(0, tokens.as_bytes());
        refill.publish(n);
        tokens.clear();
    }
    worker.service();
    let d = worker.delivery.as_ref().expect("delivering");
    let counts = format!(
        "routes {:?}\nplaced {:?}\ndropped {:?}\ndelivered {:?}",
        worker.stats.routes,
        worker
            .stats
            .providers
            .iter()
            .map(|p| p.placed)
            .collect::<Vec<_>>(),
        worker.stats.dropped,
        d.stats()[0].counters,
    );
    (entries, counts, d.taken_in_one_pass())
}

/// The one-pass path and the general one deliver the same entries in the same order and
/// count the same, on a mix the pass takes only part of: UDP frames that fit one payload
/// buffer (taken), 1500 B ones that need three (left to the general way: the pass stops
/// there, so the frames after them go the general way too), and TCP frames that stay in
/// process (skipped, the pass goes on past them), in bursts of four vectors; for a
/// consumer without metadata, and for one with it and a CRC-32 of each frame there;
/// with heads inline, with heads lent from shared memory (two buffers a frame, from
/// two pools or from one), and with small frames all head (all inline, no buffer).
#[test]
fn placing_and_lending_in_one_pass_matches_the_general_way() {
    let config = DELIVER.replace("buf_size = 2048", "buf_size = 512").replace(
        "[[route]]\nhead = \"hdr\"\nfrags = \"payload\"\n",
        "[[route]]\nmatch = { l4 = \"udp\" }\nhead = \"hdr\"\nfrags = \"payload\"\ndeliver = \"app\"\n\n[[route]]\nhead = \"hdr\"\nfrags = \"payload\"\n",
    );
    assert!(config.contains("l4 = \"udp\""));
    let (udp64, udp300, udp1500, tcp128) = (
        frames_of(64, false),
        frames_of(300, false),
        frames_of(1500, false),
        frames_of(128, true),
    );
    let pattern: [&[Vec<u8>]; 7] = [&udp64, &tcp128, &udp300, &udp64, &udp1500, &tcp128, &udp300];
    let mix: Vec<Vec<u8>> = (0..400).map(|i| pattern[i % 7][i % 4096].clone()).collect();
    // UDP (IPv4 protocol 17) is delivered, TCP stays in process.
    let is_udp = |f: &&Vec<u8>| f[23] == 17;
    // Heads inline (heap cannot be shared), and heads lent from shared memory too.
    let shared_heads = config.replace(
        "plugin = \"builtin:heap\"\nbuf_size = 256\nunverified = true",
        "plugin = \"builtin:shm\"\nbuf_size = 256\nsettings = { buffers = 16384 }",
    );
    assert_ne!(shared_heads, config);
    // Heads and the rest from one pool: two buffers off the same cache a frame.
    let one_pool = config.replace(
        "match = { l4 = \"udp\" }\nhead = \"hdr\"",
        "match = { l4 = \"udp\" }\nhead = \"payload\"",
    );
    assert_ne!(one_pool, config);
    // Frames under 65 bytes not split (the kernel's hds-thresh): the 64 B ones are all
    // head, all inline, with no buffer.
    let all_head = config.replace("mode = \"l4\"\n", "mode = \"l4\"\nhds_threshold = 65\n");
    assert_ne!(all_head, config);
    for (config, whole) in [
        (config, false),
        (shared_heads, false),
        (one_pool, false),
        (all_head, true),
    ] {
        for meta in [false, true] {
            let config = if meta {
                config.replace("policy = \"drop\"", "policy = \"drop\"\nchecksum = true")
            } else {
                config.clone()
            };
            let entries = one_pass_against_the_general_way(&config, &mix, meta, is_udp);
            let all_inline = entries.iter().filter(|e| e.1.is_empty()).count();
            assert_eq!(all_inline > 0, whole, "{all_inline} frames all inline");
        }
    }
}

/// The checks of [`placing_and_lending_in_one_pass_matches_the_general_way`] on one
/// config; the entries the one-pass worker's consumer saw.
fn one_pass_against_the_general_way(
    config: &str,
    mix: &[Vec<u8>],
    meta: bool,
    is_udp: impl Fn(&&Vec<u8>) -> bool + Copy,
) -> Vec<Entry> {
    let delivered = mix.iter().filter(is_udp).count();
    let (one_pass, counts, taken) = entries_of(config, mix, true, meta);
    let (general, general_counts, none) = entries_of(config, mix, false, meta);
    assert_eq!(none, 0, "no lanes, no one-pass path");
    assert!(taken > 100, "the one-pass path took {taken} frames");
    assert!(taken < delivered as u64, "and left some to the general way");
    assert_eq!(one_pass.len(), delivered, "every UDP frame delivered");
    assert_eq!(one_pass.len(), general.len());
    // Where each part lies is not compared: frames the pass skips take their buffers
    // after the ones it took, so the two ways hand the same buffers to other frames.
    let what = |e: &Entry| (e.0.clone(), e.1.clone(), e.2.clone());
    if let Some(at) = one_pass
        .iter()
        .zip(&general)
        .position(|(a, b)| what(a) != what(b))
    {
        panic!(
            "entry {at} differs: {:?} in one pass, {:?} the general way",
            one_pass[at], general[at]
        );
    }
    assert_eq!(counts, general_counts);
    // Each entry is its frame: the head inline, the rest in parts of at most 512 bytes.
    let udp = mix.iter().filter(is_udp);
    for ((inline, parts, metadata, offsets), frame) in one_pass.iter().zip(udp) {
        assert_eq!(metadata.is_empty(), !meta);
        // A frame's parts are in different buffers (a head and the rest from one pool
        // are two buffers off its cache, not the same one twice).
        assert!(offsets.len() < 2 || offsets[0] != offsets[1], "{offsets:?}");
        if meta {
            use zerocopy::FromBytes;
            let m = layout::FrameMeta::read_from_bytes(metadata).expect("an entry");
            assert_eq!(m.checksum, crc32fast::hash(frame));
            assert_eq!(
                (usize::from(m.inline_len), usize::from(m.parts)),
                (inline.len(), parts.len())
            );
        }
        assert_eq!(&frame[..inline.len()], &inline[..]);
        assert_eq!(
            inline.len() + parts.iter().sum::<u32>() as usize,
            frame.len()
        );
        assert!(parts.iter().all(|&p| (1..=512).contains(&p)), "{parts:?}");
    }
    one_pass
}

/// What a [`Recording`] sink saw of one frame: its rule, and each part's provider and
/// bytes.
type Seen = (usize, Vec<(usize, Vec<u8>)>);

/// A sink that keeps every frame it is shown, to compare two ways of placing. Each
/// frame's parts must hold the frame it is shown with, byte for byte, and its receive
/// sequence number must follow the last one's: a frame staged under another's index,
/// or out of order, fails here.
struct Recording(Arc<std::sync::Mutex<Vec<Seen>>>);

impl super::Sink for Recording {
    fn consume(&mut self, burst: &super::PlacedBurst<'_>) {
        let mut seen = self.0.lock().expect("not poisoned");
        let mut last_seq = None;
        for frame in burst.frames() {
            let parts: Vec<(usize, Vec<u8>)> = frame
                .parts
                .iter()
                .map(|part| {
                    let mut bytes = Vec::new();
                    assert!(frame.read_part(part, &mut bytes), "readable memory");
                    (part.provider, bytes)
                })
                .collect();
            assert_eq!(
                parts
                    .iter()
                    .flat_map(|(_, b)| b)
                    .copied()
                    .collect::<Vec<u8>>(),
                frame.original,
                "the parts hold the frame they are shown with"
            );
            assert!(last_seq < Some(frame.rx.seq), "in receive order");
            last_seq = Some(frame.rx.seq);
            seen.push((frame.rule, parts));
        }
    }

    fn counters(&self) -> crate::stats::SinkCounters {
        Default::default()
    }
}

/// The direct run (`Worker::place_direct_run`) places what the general loop places and
/// counts the same, on a mix that makes it stop part way through vectors: TCP frames of
/// 1500 B need three payload buffers of a provider that has 8 (so it runs dry in most
/// vectors, and the frames after it in the vector go the general way, some dropped),
/// UDP frames' later frags go to a third provider, and frames no rule matches (ICMP)
/// are dropped in the run.
#[test]
fn placing_in_a_direct_run_matches_the_general_way() {
    let config = r#"
[device]
kind = "pcap"
path = "(in memory)"

[split]
mode = "l4"

[providers.hdr]
plugin = "builtin:slab"
buf_size = 256
pool_size = 64

[providers.payload]
plugin = "builtin:slab"
buf_size = 512
pool_size = 64
settings = { buffers = 8 }

[providers.spill]
plugin = "builtin:heap"
buf_size = 512
unverified = true

[[route]]
match = { l4 = "tcp" }
head = "hdr"
frags = "payload"

[[route]]
match = { l4 = "udp" }
head = "hdr"
frags = "payload"
frags_rest = "spill"
"#;
    let (tcp128, udp1500, tcp1500) = (
        frames_of(128, true),
        frames_of(1500, false),
        frames_of(1500, true),
    );
    // IPv4 protocol 1: split after IP, matched by no rule.
    let mut icmp = frames_of(300, false);
    for f in &mut icmp {
        f[23] = 1;
    }
    let pattern: [&[Vec<u8>]; 6] = [&tcp128, &udp1500, &tcp128, &icmp, &tcp1500, &tcp128];
    let mix: Vec<Vec<u8>> = (0..600).map(|i| pattern[i % 6][i % 4096].clone()).collect();
    let (run, general) = (place(config, &mix, true), place(config, &mix, false));
    let (seen, _, routes, dropped, _, _) = &run;
    assert!(dropped.get(DropReason::NoRoute) == 100, "{dropped:?}");
    assert!(dropped.get(DropReason::Dry) > 10, "{dropped:?}");
    // Frames after a dry one in the same vector were placed: the run stopped there and
    // the general loop went on.
    assert!(routes[0].frames > 300 && routes[1].frames > 0, "{routes:?}");
    assert!(seen
        .iter()
        .any(|(rule, parts)| *rule == 1 && parts.len() == 4 && parts[3].0 == 2));
    assert_placed_alike(&run, &general, false);
}

/// The device, split and providers of the tests that place vectors in runs, and their
/// first rule (TCP: head and payload in two providers). The payload provider holds 40
/// buffers, so its cache is short for a whole vector at times.
const RUN_CONFIG: &str = r#"
[device]
kind = "pcap"
path = "(in memory)"

[split]
mode = "l4"
hds_threshold = 100

[providers.hdr]
plugin = "builtin:slab"
buf_size = 256
pool_size = 64

[providers.payload]
plugin = "builtin:slab"
buf_size = 2048
pool_size = 64
settings = { buffers = 40 }

[[route]]
match = { l4 = "tcp" }
head = "hdr"
frags = "payload"
"#;

/// Mixed vectors, like the demo's: TCP and UDP frames split in two by two rules that
/// share their providers, among ICMP (whose rule puts head and payload in one
/// provider), small TCP frames placed whole, and frames no rule matches; every 7th
/// vector all one kind, which goes in one run. The payload provider's 40 buffers make
/// some vectors give way part way. Every frame is placed, staged in order and counted
/// as by the general loop alone.
#[test]
fn mixed_vectors_match_the_general_way() {
    let config = format!(
        r#"{RUN_CONFIG}
[[route]]
match = {{ l4 = "udp" }}
head = "hdr"
frags = "payload"

[[route]]
match = {{ l4 = "icmp" }}
head = "hdr"
frags = "hdr"
"#
    );
    let config = config.as_str();
    let (tcp128, tcp1500, udp600) = (
        frames_of(128, true),
        frames_of(1500, true),
        frames_of(600, false),
    );
    // IPv4 protocol 1 (ICMP, split after its 8 bytes), and 2 (no rule).
    let proto = |p: u8| -> Vec<Vec<u8>> {
        udp600
            .iter()
            .map(|f| {
                let mut f = f.clone();
                f[23] = p;
                f
            })
            .collect()
    };
    let (icmp, igmp) = (proto(1), proto(2));
    // Six kinds in turn, so vectors of 8 start at each in turn; every 7th vector of
    // one kind only, so the runs of one rule stay covered too.
    let pattern: [&[Vec<u8>]; 6] = [&udp600, &tcp1500, &tcp1500, &tcp128, &udp600, &icmp];
    let mix: Vec<Vec<u8>> = (0..1800)
        .map(|i| {
            let kinds = match (i / 8) % 7 {
                6 => &tcp1500,
                _ if i % 29 == 0 => &igmp,
                _ => pattern[i % 6],
            };
            kinds[i % 4096].clone()
        })
        .collect();
    let (run, general) = (place(config, &mix, true), place(config, &mix, false));
    assert_eq!(
        run.3.get(DropReason::NoRoute),
        (0..1800)
            .filter(|i| i % 29 == 0 && (i / 8) % 7 != 6)
            .count() as u64
    );
    assert!(
        run.2[0].frames > 0 && run.2[1].frames > 0 && run.2[2].frames > 0,
        "{:?}",
        run.2
    );
    assert_placed_alike(&run, &general, true);
}

/// `run` (the worker's way) saw and counted what `general` (the general loop alone)
/// did: every frame, in order, and every counter; with `pools`, the pools' counters
/// too, and every buffer back in its pool.
fn assert_placed_alike(run: &Placed, general: &Placed, pools: bool) {
    if let Some(at) = run.0.iter().zip(&general.0).position(|(a, b)| a != b) {
        panic!(
            "frame {at} differs: {:?} the worker's way, {:?} the general way",
            run.0[at], general.0[at]
        );
    }
    assert_eq!(run.0.len(), general.0.len(), "frames shown");
    assert_eq!(run.1, general.1, "provider counters");
    assert_eq!(run.2, general.2, "route counters");
    assert_eq!(run.3, general.3, "drops");
    assert_eq!(run.4, general.4, "fallbacks");
    if pools {
        assert_eq!(run.5, general.5, "pool and check counters");
        // Recycling is the same code both ways: every buffer must be back in its pool.
        assert!(
            run.5.iter().all(|(pool, _)| pool.inflight == 0),
            "a buffer did not come back: {:?}",
            run.5
        );
    }
}

/// What [`place`] saw and counted: every frame the sink was shown, each provider's
/// placed and dropped counters, each route's, the drops, the fallbacks, and each
/// provider's pool (but its cache's fast traffic) and check counters.
type Placed = (
    Vec<Seen>,
    Vec<(crate::stats::Volume, crate::stats::Tally<DropReason>)>,
    Vec<crate::stats::Volume>,
    crate::stats::Tally<DropReason>,
    u64,
    Vec<(crate::pool::PoolStats, crate::provider::ProviderCounters)>,
);

/// Places `mix` under `config` through one worker, in bursts of 32, with the direct run
/// (and its whole-vector runs) or the general loop only.
fn place(config: &str, mix: &[Vec<u8>], direct: bool) -> Placed {
    let config = Config::from_toml(config, "direct run", Default::default(), None).expect("valid");
    let engine = Engine::new(config, &PluginPath::from_env()).expect("built-in providers");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut worker = engine
        .test_worker(Box::new(Recording(Arc::clone(&seen))), None)
        .expect("a worker");
    assert!(
        worker.all_direct,
        "every rule places into memory the host writes"
    );
    worker.all_direct = direct;
    for burst in received(mix).chunks(32) {
        measured_burst(&mut worker, burst);
    }
    let s = worker.snapshot();
    let placed: Vec<_> = s.providers.iter().map(|p| (p.placed, p.dropped)).collect();
    // Not the cache's own traffic: a frame the direct run gives back part way (its
    // payload's cache dry) takes and returns its head once more than the general way.
    let pools = s
        .providers
        .iter()
        .map(|p| {
            let pool = crate::pool::PoolStats {
                alloc_fast: 0,
                recycle_cached: 0,
                ..p.pool
            };
            (pool, p.checks)
        })
        .collect();
    let seen = std::mem::take(&mut *seen.lock().expect("not poisoned"));
    (seen, placed, s.routes, s.dropped, s.fallback, pools)
}

/// Vectors placed in one run (`Worker::place_whole_run`, `place_split_run`: every frame
/// of one rule, whole or split in two, into buffers from the top of the caches) hold
/// and count what frame-by-frame placing does. The mix comes in vectors of 8 of one
/// kind and some that are no run: 128 B TCP placed whole, 1500 B TCP split in two,
/// UDP whose head and payload share a provider, TCP of 3000 B (two payload buffers),
/// 1500 B TCP and UDP in turn (parts that alternate two pools at even places only),
/// and vectors that mix them all. The payload provider holds 40 buffers, so its cache
/// is short for a whole vector at times and the run gives way to the frame-by-frame
/// loop. Every buffer goes back where it came from: the pools' counters (buffers taken
/// from the providers, refills) match too.
#[test]
fn placing_vectors_in_one_run_matches_frame_by_frame() {
    let config = format!(
        r#"{RUN_CONFIG}
[[route]]
match = {{ l4 = "udp" }}
head = "hdr"
frags = "hdr"
"#
    );
    let config = config.as_str();
    let (tcp128, tcp1500, tcp3000, udp200) = (
        frames_of(128, true),
        frames_of(1500, true),
        frames_of(3000, true),
        frames_of(200, false),
    );
    let kinds: [&[Vec<u8>]; 4] = [&tcp128, &tcp1500, &tcp3000, &udp200];
    // Vectors of 8 of one kind in a row, then mixed ones, repeating.
    let mix: Vec<Vec<u8>> = (0..1600)
        .map(|i| {
            let vector = i / 8;
            let kind = match vector % 8 {
                0..=2 => 0,
                3 | 4 => 1,
                5 => 2 + i % 2,
                6 => [1, 3][i % 2],
                _ => i % 4,
            };
            kinds[kind][i % 4096].clone()
        })
        .collect();
    let (run, general) = (place(config, &mix, true), place(config, &mix, false));
    assert_eq!(run.0.len(), 1600, "every frame placed");
    // Whole and split frames both: the runs had something to do.
    assert!(run
        .0
        .iter()
        .any(|(rule, parts)| *rule == 0 && parts.len() == 1));
    assert!(run
        .0
        .iter()
        .any(|(rule, parts)| *rule == 0 && parts.len() == 2));
    assert_placed_alike(&run, &general, true);
}
