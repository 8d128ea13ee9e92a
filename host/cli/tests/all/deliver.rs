//! Delivery to consumer processes, with real processes on both sides: `memplex run` and
//! `memplex consume`, the C example, and `misbehave` (a consumer that breaks the
//! protocol on purpose).

use super::cli::{configs, memplex_in};
use super::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `memplex run` in the background, on a config of its own in a directory of its own.
struct Run {
    child: Option<Child>,
    dir: PathBuf,
}

/// The providers every delivery config has: heads in `hdr` (heap, not shareable: heads
/// go inline), payload in `payload` (shm).
const PROVIDERS: &str = r#"
[providers.hdr]
plugin = "heap"
buf_size = 256
unverified = true

[providers.payload]
plugin = "shm"
buf_size = 2048
pool_size = 1024
settings = { buffers = 65536 }
"#;

impl Run {
    /// Starts `memplex run` for `seconds` on the default capture at `rate` frames per
    /// second, with `body` (providers, consumers, routes) after the device and split.
    /// `{dir}` in `body` becomes the run's directory. Waits for every consumer socket.
    fn start(test: &str, body: &str, rate: u32, seconds: f64) -> Run {
        Self::start_with_env(test, body, rate, seconds, &[])
    }

    /// As `start`, with environment overrides for the run.
    fn start_with_env(
        test: &str,
        body: &str,
        rate: u32,
        seconds: f64,
        env: &[(&str, String)],
    ) -> Run {
        let dir = std::env::temp_dir().join(format!("mpx-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let capture = configs("captures/default.pcap");
        let config = format!(
            "[device]\nkind = \"pcap\"\npath = \"{capture}\"\nrepeat = 100000000\nrate = {rate}\n\n[split]\nmode = \"l4\"\n\n[runtime]\nsink = \"verify\"\n{}",
            body.replace("{dir}", &dir.display().to_string())
        );
        std::fs::write(dir.join("run.toml"), &config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_memplex"))
            .args(["run", "-c", "run.toml", "--json", "--duration"])
            .arg(seconds.to_string())
            .current_dir(&dir)
            .env("MEMPLEX_PLUGIN_PATH", build_dir())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let run = Run {
            child: Some(child),
            dir,
        };
        let sockets: Vec<&str> = config
            .lines()
            .filter_map(|l| l.strip_prefix("socket = \""))
            .map(|l| l.trim_end_matches('"'))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut run = run;
        for s in sockets {
            while !Path::new(s).exists() {
                if let Ok(Some(status)) = run.child.as_mut().unwrap().try_wait() {
                    let out = run.child.take().unwrap().wait_with_output().unwrap();
                    panic!(
                        "memplex run ended ({status}) before {s} appeared:\n{}\n{config}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                assert!(Instant::now() < deadline, "{s} never appeared\n{config}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        run
    }

    fn socket(&self, name: &str) -> String {
        self.dir.join(format!("{name}.sock")).display().to_string()
    }

    /// Waits for the run to end: its exit code, its final JSON report, its stderr.
    fn finish(mut self) -> (i32, Value, String) {
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let last =
            final_report(&stdout).unwrap_or_else(|| panic!("no final report\n{stdout}\n{stderr}"));
        (out.status.code().unwrap_or(-1), last, stderr)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The final report among the JSON lines `memplex run --json` printed.
fn final_report(stdout: &str) -> Option<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["final"] == true)
}

/// `memplex consume` with `args`, to its end: exit code and JSON report.
fn consume(socket: &str, args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args(["consume", "--socket", socket, "--json"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report = text
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no report from consume {args:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status.code().unwrap_or(-1), report)
}

fn consumer<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["total"]["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no consumer {name} in {report}"))
}

fn leaked(report: &Value) -> u64 {
    report["pools"]
        .as_array()
        .map(|p| p.iter().map(|p| p["leaked"].as_u64().unwrap()).sum())
        .unwrap_or(0)
}

/// A run's body: `PROVIDERS`, the consumer `tcp` with `settings` (lines of its table
/// after its socket), a route delivering TCP to it, and the rest placed in process.
fn tcp_delivered(settings: &str) -> String {
    format!(
        "{PROVIDERS}\n[consumers.tcp]\nsocket = \"{{dir}}/tcp.sock\"\n{settings}\n[[route]]\nmatch = {{ l4 = \"tcp\" }}\nhead = \"hdr\"\nfrags = \"payload\"\ndeliver = \"tcp\"\n\n[[route]]\nhead = \"hdr\"\nfrags = \"hdr\"\n"
    )
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn a_consumer_process_reads_every_frame_in_place_and_verifies_it() {
    let body = tcp_delivered("checksum = true\n");
    let run = Run::start("verify", &body, 100_000, 3.0);
    let (code, got) = consume(&run.socket("tcp"), &["--mode", "verify"]);
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    assert_eq!(code, 0, "{got}");
    let frames = u(&got["frames"]);
    assert!(frames > 10_000, "{got}");
    assert_eq!(u(&got["verified"]), frames, "{got}");
    assert_eq!(u(&got["mismatched"]), 0);
    // Heads inline (heap cannot share), payload in place: one part per frame, read in
    // the provider's memory.
    assert_eq!(u(&got["head_inline"]), frames);
    assert_eq!(u(&got["parts_in_place"]), frames);
    assert_eq!(got["ended"], "memplex stopped");
    let c = consumer(&report, "tcp");
    assert_eq!(
        u(&c["frames"]),
        frames,
        "every delivered frame was read: {c}"
    );
    assert_eq!(u(&c["returned"]), frames, "every buffer came back: {c}");
    assert_eq!(u(&c["reclaimed"]), 0, "{c}");
    assert_eq!(u(&c["gone"]), 0, "{c}");
    assert_eq!(u(&c["regions_sent"]), 1, "{c}");
    assert_eq!(c["disconnects"]["shutdown"], 1, "{c}");
    assert_eq!(leaked(&report), 0);
    // The other route's frames stayed in-process and were verified by the sink.
    assert!(u(&report["total"]["sink"]["verified"]) > 10_000, "{report}");
    // A head that goes inline is copied from the frame into the ring and takes no
    // buffer: `hdr` holds exactly the in-process route's bytes (head and frags), and
    // `payload` the delivered frames' bytes after their heads.
    let placed = |name: &str| {
        let p = report["total"]["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        u(&p["placed"]["bytes"])
    };
    let routes = report["total"]["routes"].as_array().unwrap();
    assert_eq!(placed("hdr"), u(&routes[1]["bytes"]), "{report}");
    let delivered = u(&routes[0]["bytes"]);
    assert!(
        placed("payload") < delivered && placed("payload") > delivered / 2,
        "payload {} of {delivered}: {report}",
        placed("payload")
    );
}

/// The CRC-32 of every frame of the default capture, in order.
fn capture_crcs() -> Vec<u32> {
    let file = std::fs::File::open(configs("captures/default.pcap")).unwrap();
    let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap();
    let mut crcs = Vec::new();
    while let Some(packet) = reader.next_packet() {
        crcs.push(crc32fast::hash(&packet.unwrap().data));
    }
    assert!(crcs.len() > 100, "the capture has frames");
    crcs
}

/// The checksum digest (sum of CRC-32s modulo 2^32) of frames `from..from + n` of the
/// capture played over and over.
fn digest_of(crcs: &[u32], from: u64, n: u64) -> u64 {
    let len = crcs.len() as u64;
    let d = (from..from + n).fold(0u32, |d, i| d.wrapping_add(crcs[(i % len) as usize]));
    u64::from(d)
}

#[test]
fn a_checksumming_consumer_and_the_checksum_sink_read_exactly_the_frames_received() {
    let crcs = capture_crcs();
    // In-process: three plays of the capture, heads in a WASM guest (read through the
    // provider's `read` op) and payload in shared memory, every byte read by the sink.
    let dir = std::env::temp_dir().join(format!("mpx-checksum-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sink.toml");
    std::fs::write(
        &config,
        format!(
            "[device]\nkind = \"pcap\"\npath = \"{}\"\nrepeat = 3\n\n[split]\nmode = \"l4\"\n\n[runtime]\nsink = \"checksum\"\n\n[providers.guest]\nplugin = \"slab.wasm\"\nbuf_size = 256\n{PROVIDERS}\n[[route]]\nhead = \"guest\"\nfrags = \"payload\"\n",
            configs("captures/default.pcap")
        ),
    )
    .unwrap();
    let (code, out) = memplex_in(
        &["run", "-c", config.to_str().unwrap(), "--json"],
        &build_dir(),
        None,
        &[],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 0, "{out}");
    let report = final_report(&out).unwrap_or_else(|| panic!("no final report: {out}"));
    let sink = &report["total"]["sink"];
    let frames = 3 * crcs.len() as u64;
    assert_eq!(u(&sink["checksummed"]), frames, "{sink}");
    assert_eq!(u(&sink["unreadable"]), 0, "{sink}");
    assert_eq!(u(&sink["digest"]), digest_of(&crcs, 0, frames), "{sink}");

    // A consumer process, without metadata: it reads the frames from the first it was
    // given, in order, one queue; the ones before it connected (if any: memplex waits
    // for it) were dropped as no_consumer, and nothing else was. The policy is `wait`,
    // and the rate one a debug build reads with room to spare on a loaded machine, so
    // that no frame is dropped for a full ring.
    let body = format!(
        "{PROVIDERS}\n[consumers.all]\nsocket = \"{{dir}}/all.sock\"\npolicy = \"wait\"\nwait_ms = 2000\n\n[[route]]\nhead = \"hdr\"\nfrags = \"payload\"\ndeliver = \"all\"\n"
    );
    let run = Run::start("checksum", &body, 20_000, 2.0);
    let (code, got) = consume(&run.socket("all"), &["--mode", "checksum", "--no-metadata"]);
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    assert_eq!(code, 0, "{got}");
    let frames = u(&got["checksummed"]);
    assert!(frames > 5_000, "{got}");
    assert_eq!(u(&got["frames"]), frames, "{got}");
    let dropped = &report["total"]["dropped"];
    let before = u(&dropped["no_consumer"]);
    let all: u64 = dropped.as_object().unwrap().values().map(u).sum();
    assert_eq!(all, before, "only frames before the consumer: {dropped}");
    assert_eq!(u(&consumer(&report, "all")["frames"]), frames, "{report}");
    assert_eq!(
        u(&got["digest"]),
        digest_of(&crcs, before, frames),
        "the consumer read frames {before}.. of the capture played over: {got}"
    );
    assert_eq!(leaked(&report), 0);
}

#[test]
fn frag_slices_point_into_the_providers_memory_as_mapped_here() {
    let body = format!(
        "{PROVIDERS}\n[consumers.all]\nsocket = \"{{dir}}/all.sock\"\n\n[[route]]\nhead = \"payload\"\nfrags = \"payload\"\ndeliver = \"all\"\n"
    );
    let run = Run::start("zerocopy", &body, 50_000, 2.0);
    let c = memplex_consumer::Consumer::connect(
        run.socket("all"),
        &memplex_consumer::Options::new("all"),
    )
    .unwrap();
    let mut frames = 0;
    let mut bytes = 0;
    while frames < 2000 {
        let Some(f) = c.next(Some(Duration::from_secs(5))).unwrap() else {
            panic!("no frame within 5 s");
        };
        assert!(!f.head_inline(), "shm heads are shared too");
        let maps: Vec<_> = f.part_mappings().collect();
        let slices = std::iter::once(f.head()).chain(f.frags());
        for (s, m) in slices.zip(&maps) {
            let (start, end) = (s.as_ptr() as usize, s.as_ptr() as usize + s.len());
            assert!(
                m.start <= start && end <= m.end,
                "slice {start:#x}..{end:#x} outside the mapping {m:?}: it was copied"
            );
            bytes += s.len();
        }
        frames += 1;
    }
    c.close();
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    assert!(bytes > 0);
    assert_eq!(leaked(&report), 0);
    // Frames delivered after it stopped reading were taken back when it left.
    let all = consumer(&report, "all");
    assert_eq!(u(&all["lent"]), 0, "{all}");
    assert_eq!(all["disconnects"]["left"], 1, "{all}");
}

#[test]
fn frames_handed_over_in_bursts_come_in_order_verified_and_all_go_back() {
    // Two queues, frames read with `next_burst` (at most 7 a call) and now and then with
    // `next`, the last 10 held across calls: in order per queue with no gap (the policy
    // waits), each frame's checksum right, every buffer back at the end.
    let body = format!(
        "{PROVIDERS}\n[consumers.all]\nsocket = \"{{dir}}/all.sock\"\nchecksum = true\npolicy = \"wait\"\n\n[[route]]\nhead = \"hdr\"\nfrags = \"payload\"\ndeliver = \"all\"\n"
    );
    let run = Run::start_with_env(
        "burst",
        &body,
        50_000,
        2.0,
        &[("MEMPLEX_DEVICE__QUEUES", "2".into())],
    );
    let c = memplex_consumer::Consumer::connect(
        run.socket("all"),
        &memplex_consumer::Options::new("all"),
    )
    .unwrap();
    assert_eq!(c.queues(), 2);
    // Asking for no frames returns at once, not after the timeout.
    let t = Instant::now();
    let none = c.next_burst(0, Some(Duration::from_secs(3)), |_| {
        panic!("a frame when none was asked for")
    });
    assert_eq!(none.unwrap(), 0);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let mut held = std::collections::VecDeque::new();
    let mut last_seq = [None::<u64>; 2];
    let (mut frames, mut calls, mut most, mut bad) = (0u64, 0u64, 0usize, 0u64);
    let mut per_queue = [0u64; 2];
    let mut check = |f: &memplex_consumer::Frame<'_>| {
        let m = *f.meta().expect("metadata was asked for");
        let q = usize::from(m.queue);
        assert_eq!(q, f.queue());
        if let Some(prev) = last_seq[q] {
            assert_eq!(
                m.seq,
                prev + 1,
                "queue {q}: a frame out of order or missing"
            );
        }
        last_seq[q] = Some(m.seq);
        per_queue[q] += 1;
        if f.verify() != Some(true) {
            bad += 1;
        }
    };
    while frames < 6000 {
        calls += 1;
        let n = if calls % 5 == 0 {
            let f = c
                .next(Some(Duration::from_secs(5)))
                .unwrap()
                .expect("a frame within 5 s");
            check(&f);
            held.push_back(f);
            1
        } else {
            c.next_burst(7, Some(Duration::from_secs(5)), |f| {
                check(&f);
                held.push_back(f);
            })
            .unwrap()
        };
        assert!(n > 0, "no frame within 5 s after {frames}");
        most = most.max(n);
        frames += n as u64;
        while held.len() > 10 {
            held.pop_front();
        }
    }
    assert!(most <= 7, "a burst of {most} frames, past the 7 asked for");
    assert!(
        most > 1,
        "frames came one at a time: bursts were never filled"
    );
    assert_eq!(bad, 0, "frames whose checksum did not match");
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "a queue never read: {per_queue:?}"
    );
    drop(held);
    c.close();
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    assert_eq!(leaked(&report), 0);
    let all = consumer(&report, "all");
    assert_eq!(u(&all["lent"]), 0, "{all}");
    assert!(u(&all["returned"]) >= frames, "{all}");
}

#[test]
fn a_consumer_without_metadata_gets_descriptors_only_and_an_older_version_is_refused() {
    let body = format!(
        "{PROVIDERS}\n[consumers.all]\nsocket = \"{{dir}}/all.sock\"\nchecksum = true\n\n[[route]]\nmatch = {{ l4 = \"tcp\" }}\nhead = \"hdr\"\nfrags = \"payload\"\ndeliver = \"all\"\n\n[[route]]\nhead = \"payload\"\nfrags = \"payload\"\ndeliver = \"all\"\n"
    );
    let run = Run::start("nometa", &body, 50_000, 2.0);
    // A version 1 Hello (72 bytes of body) is refused for its version, naming both.
    let old = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        None,
    )
    .unwrap();
    let addr = rustix::net::SocketAddrUnix::new(run.socket("all").as_str()).unwrap();
    rustix::net::connect(&old, &addr).unwrap();
    let mut hello = Vec::new();
    hello.extend_from_slice(&memplex_proto::msg::MAGIC.to_le_bytes());
    hello.extend_from_slice(&1u32.to_le_bytes()); // Hello
    hello.extend_from_slice(&1u32.to_le_bytes()); // version 1
    hello.extend_from_slice(&1u32.to_le_bytes()); // busy-poll
    hello.extend_from_slice(&[0u8; 64]);
    rustix::net::send(&old, &hello, rustix::net::SendFlags::empty()).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = rustix::net::recv(&old, &mut buf, rustix::net::RecvFlags::empty()).unwrap();
    let bye = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(bye.contains("protocol version 1 is not 2"), "{bye:?}");
    // A session without metadata: no metadata ring, so no checksums either, and each
    // frame is its descriptors: the head (inline, or the first part) and the frags.
    let c = memplex_consumer::Consumer::connect(
        run.socket("all"),
        &memplex_consumer::Options::new("all").without_metadata(),
    )
    .unwrap();
    assert!(!c.metadata() && !c.checksums());
    let (mut frames, mut inline, mut in_place) = (0, 0, 0);
    while frames < 3000 {
        let Some(f) = c.next(Some(Duration::from_secs(5))).unwrap() else {
            panic!("no frame within 5 s");
        };
        assert!(f.meta().is_none() && f.verify().is_none());
        let bytes = f.head().len() + f.frags().map(<[u8]>::len).sum::<usize>();
        assert_eq!(bytes, f.len());
        assert!(f.len() >= 42, "a frame of {} bytes", f.len());
        // An Ethernet header first, wherever the head came from.
        assert!(matches!(
            &f.head()[12..14],
            [0x08, 0x00] | [0x86, 0xdd] | [0x81, 0x00]
        ));
        if f.head_inline() {
            inline += 1;
        } else {
            in_place += 1;
        }
        frames += 1;
    }
    // Both kinds of frame came: TCP with its head inline (heap), the rest in place.
    assert!(
        inline > 0 && in_place > 0,
        "{inline} inline, {in_place} in place"
    );
    // Frames go on arriving unread for a while: they are counted as gone at the end.
    std::thread::sleep(Duration::from_millis(50));
    c.close();
    // `memplex consume` says what goes with --no-metadata.
    let out = Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args(["consume", "--socket", &run.socket("all"), "--no-metadata"])
        .args(["--mode", "verify"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--no-metadata goes with --mode count or checksum only"),
        "{err}"
    );
    // A refill batch of nothing is refused, by name.
    let out = Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args(["consume", "--socket", &run.socket("all"), "--batch", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--batch"), "{err}");
    let (code, out) = consume(
        &run.socket("all"),
        &["--no-metadata", "--frames", "500", "--batch", "16"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        u(&out["frames"]) >= 500 && u(&out["bytes"]) >= 500 * 42,
        "{out}"
    );
    assert_eq!(u(&out["batch"]), 16, "the refill batch asked for: {out}");
    assert_eq!(
        u(&out["latency_ns"]["samples"]),
        0,
        "no metadata, no receive times: {out}"
    );
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    assert_eq!(leaked(&report), 0);
    // Every frame delivered to the two sessions was read or, left in the ring when the
    // session ended, counted as gone: exactly.
    let c = consumer(&report, "all");
    assert!(u(&c["gone"]) > 0, "{c}");
    assert_eq!(
        u(&c["frames"]),
        3000 + u(&out["frames"]) + u(&c["gone"]),
        "{c} {out}"
    );
}

#[test]
fn the_c_example_consumer_reads_frames_in_place() {
    use memplex_proto::layout::{ChannelHeader, Desc, FrameMeta, TxEntry, TxPart, TxPartsEntry};
    use memplex_proto::msg::{Bye, Channel, Hello, Region, Welcome};
    use std::mem::{offset_of, size_of};
    let dir = std::env::temp_dir().join(format!("mpx-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("count");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cc = Command::new("cc")
        .args([
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-std=c11",
            "-D_GNU_SOURCE",
            "-I",
        ])
        .arg(root.join("consumer/include"))
        .arg("-o")
        .arg(&exe)
        .arg(root.join("consumer/examples/c/count.c"))
        .output()
        .expect("a C compiler (cargo xtask installs gcc when it is missing)");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    // The C header's layout is Rust's.
    let layout = Command::new(&exe).arg("--layout").output().unwrap();
    let c: Value = serde_json::from_slice(&layout.stdout).unwrap();
    for (key, rust) in [
        ("desc", size_of::<Desc>()),
        ("frame_meta", size_of::<FrameMeta>()),
        ("channel_header", size_of::<ChannelHeader>()),
        ("hello", size_of::<Hello>()),
        ("welcome", size_of::<Welcome>()),
        ("channel", size_of::<Channel>()),
        ("region", size_of::<Region>()),
        ("bye", size_of::<Bye>()),
        ("off_rx_mono_ns", offset_of!(FrameMeta, rx_mono_ns)),
        ("off_flags", offset_of!(FrameMeta, flags)),
        ("off_parts", offset_of!(FrameMeta, parts)),
        ("off_layer", offset_of!(FrameMeta, layer)),
        ("off_desc_word", offset_of!(Desc, word)),
        ("off_hello_features", offset_of!(Hello, features)),
        ("off_welcome_features", offset_of!(Welcome, features)),
        ("off_rings", offset_of!(ChannelHeader, rings)),
        ("tx_entry", size_of::<TxEntry>()),
        ("tx_part", size_of::<TxPart>()),
        ("tx_parts_entry", size_of::<TxPartsEntry>()),
        ("off_tx_csum_start", offset_of!(TxEntry, csum_start)),
        ("off_tx_part", offset_of!(TxEntry, part)),
    ] {
        assert_eq!(c[key].as_u64(), Some(rust as u64), "{key}: C {c}");
    }
    let body = tcp_delivered("checksum = true\n");
    let run = Run::start("cexample", &body, 100_000, 2.0);
    let out = Command::new(&exe)
        .args([run.socket("tcp").as_str(), "--name", "tcp", "--verify"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (rc, report, err) = run.finish();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |k: &str| -> u64 {
        let w: Vec<&str> = text.split_whitespace().collect();
        let i = w
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("{k} in {text}"));
        w[i + 1].parse().unwrap()
    };
    let frames = field("frames");
    assert!(frames > 10_000, "{text}");
    assert_eq!(field("verified"), frames, "{text}");
    assert_eq!(field("mismatched"), 0);
    assert_eq!(field("in_place"), frames, "{text}");
    assert_eq!(u(&consumer(&report, "tcp")["frames"]), frames);
    assert_eq!(u(&consumer(&report, "tcp")["reclaimed"]), 0);
    assert_eq!(leaked(&report), 0);
}

#[test]
fn a_consumer_killed_with_sigkill_gives_everything_back_and_a_new_session_starts() {
    let body = tcp_delivered("ring_entries = 1024\nchecksum = true\n");
    let run = Run::start("sigkill", &body, 50_000, 4.0);
    // Slow, and sitting on 300 frames: when it dies it holds buffers, and frames wait
    // unread in its ring.
    let mut slow = Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args(["consume", "--socket", &run.socket("tcp"), "--hold", "300"])
        .args(["--delay-us", "500"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    slow.kill().unwrap();
    let status = slow.wait().unwrap();
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(300));
    // A new session: it gets frames, all good.
    let (code, got) = consume(
        &run.socket("tcp"),
        &["--mode", "verify", "--frames", "5000"],
    );
    assert_eq!(code, 0, "{got}");
    assert_eq!(u(&got["verified"]), 5000, "{got}");
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "the run goes on: {err}");
    let c = consumer(&report, "tcp");
    assert_eq!(u(&c["sessions_started"]), 2, "{c}");
    assert!(u(&c["disconnects"]["left"]) >= 1, "{c}");
    assert!(
        u(&c["reclaimed"]) >= 300,
        "the killed one's held buffers came back: {c}"
    );
    assert!(u(&c["gone"]) > 0, "frames it never read are counted: {c}");
    assert!(u(&report["total"]["dropped"]["consumer_gone"]) >= u(&c["gone"]));
    assert_eq!(u(&c["lent"]), 0, "{c}");
    assert_eq!(leaked(&report), 0, "{report}");
}

#[test]
fn hostile_consumers_are_cut_off_with_the_reason_and_the_host_is_unaffected() {
    let body = tcp_delivered("checksum = true\n");
    let run = Run::start("hostile", &body, 50_000, 8.0);
    let misbehave = build_dir().join("examples/misbehave");
    assert!(
        misbehave.is_file(),
        "{} is missing: `cargo xtask build` builds it",
        misbehave.display()
    );
    for (mode, reason) in [
        (
            "garbage-token",
            "3 a refill token was stale, foreign or forged",
        ),
        ("duplicate-token", "3 a refill token"),
        ("foreign-token", "3 a refill token"),
        ("wild-refill-index", "4 a ring index moved"),
        ("wild-completion-index", "4 a ring index moved"),
    ] {
        let out = Command::new(&misbehave)
            .args([run.socket("tcp").as_str(), mode])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&format!("ended {reason}")), "{mode}: {text}");
    }
    // Payload memory is read-only here: a writable mapping is refused, a write faults.
    let out = Command::new(&misbehave)
        .args([run.socket("tcp").as_str(), "write-payload"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(11), "SIGSEGV: {text}");
    assert!(text.contains("writable mapping: refused"), "{text}");
    // And a well-behaved consumer still gets every frame right.
    let (code, got) = consume(
        &run.socket("tcp"),
        &["--mode", "verify", "--frames", "5000"],
    );
    assert_eq!(code, 0, "{got}");
    assert_eq!(u(&got["verified"]), 5000);
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    let c = consumer(&report, "tcp");
    assert_eq!(u(&c["disconnects"]["bad_token"]), 3, "{c}");
    assert_eq!(u(&c["disconnects"]["bad_index"]), 2, "{c}");
    assert_eq!(u(&c["lent"]), 0, "{c}");
    assert_eq!(leaked(&report), 0, "{report}");
}

#[test]
fn slow_absent_and_greedy_consumers_meet_the_policy_and_the_quota() {
    let body = tcp_delivered("ring_entries = 128\nquota = 64\n");
    let run = Run::start("policy", &body, 50_000, 4.0);
    // Nobody yet: no_consumer.
    std::thread::sleep(Duration::from_millis(300));
    // Slow: the small ring fills, consumer_full.
    let (code, got) = consume(
        &run.socket("tcp"),
        &["--delay-us", "2000", "--seconds", "1"],
    );
    assert_eq!(code, 0, "{got}");
    // Greedy: sits on more buffers than its quota, consumer_quota.
    let (code, got2) = consume(&run.socket("tcp"), &["--hold", "1000", "--seconds", "1"]);
    assert_eq!(code, 0, "{got2}");
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    let dropped = &report["total"]["dropped"];
    for reason in ["no_consumer", "consumer_full", "consumer_quota"] {
        assert!(u(&dropped[reason]) > 0, "{reason}: {dropped}");
    }
    assert!(u(&consumer(&report, "tcp")["ring_full"]) > 0);
    // The in-process route never noticed.
    assert!(u(&report["total"]["sink"]["verified"]) > 50_000, "{report}");
    assert_eq!(leaked(&report), 0);
}

#[test]
fn two_consumers_on_two_routes_and_two_sessions_sharing_one_by_flow() {
    let body = format!(
        "{PROVIDERS}\n[providers.udp]\nplugin = \"slab\"\nbuf_size = 2048\nsettings = {{ buffers = 65536 }}\n\n[consumers.tcp]\nsocket = \"{{dir}}/tcp.sock\"\n\n[consumers.udp]\nsocket = \"{{dir}}/udp.sock\"\n\n[[route]]\nmatch = {{ l4 = \"tcp\" }}\nhead = \"hdr\"\nfrags = \"payload\"\ndeliver = \"tcp\"\n\n[[route]]\nmatch = {{ l4 = \"udp\" }}\nhead = \"hdr\"\nfrags = \"udp\"\ndeliver = \"udp\"\n\n[[route]]\nhead = \"hdr\"\nfrags = \"hdr\"\n"
    );
    let run = Run::start("sharing", &body, 50_000, 4.0);
    let spawn = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_memplex"))
            .args([
                "consume",
                "--socket",
                &run.socket(name),
                "--json",
                "--seconds",
                "2",
            ])
            // Flows move between sessions while they join; count once both are in.
            .args(["--warmup", "0.7"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b, udp) = (spawn("tcp"), spawn("tcp"), spawn("udp"));
    let report_of = |c: Child| -> Value {
        let out = c.wait_with_output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (a, b, udp) = (report_of(a), report_of(b), report_of(udp));
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    let flows = |r: &Value| -> std::collections::BTreeMap<String, u64> {
        r["flows"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect()
    };
    let (fa, fb) = (flows(&a), flows(&b));
    assert!(
        !fa.is_empty() && !fb.is_empty(),
        "both sessions got flows: {a} {b}"
    );
    // A flow goes to one session while both are connected; when the first leaves, the
    // other gets everything for its last moments, so allow a small tail.
    for (flow, &n) in &fa {
        let m = fb.get(flow).copied().unwrap_or(0);
        assert!(
            n.min(m) * 20 <= n + m,
            "flow {flow} split between sessions: {n} and {m} frames"
        );
    }
    // Each consumer got its own route's frames only.
    assert_eq!(
        a["routes"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["0"]
    );
    assert_eq!(
        udp["routes"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["1"]
    );
    assert!(u(&udp["frames"]) > 0);
    assert_eq!(u(&consumer(&report, "tcp")["sessions_started"]), 2);
    assert_eq!(leaked(&report), 0);
}

#[test]
fn device_memory_the_host_cannot_touch_is_delivered_as_descriptors_and_regions_arrive_mid_session()
{
    // devmem is mapped PROT_NONE in memplex and filled with pwrite by the provider; the
    // consumer reads it through its own mapping of the descriptor and verifies it.
    // UDP frames go to a second provider whose region is announced when the first UDP
    // frame is delivered, after the session has read TCP frames.
    let body = format!(
        "[providers.hdr]\nplugin = \"heap\"\nbuf_size = 256\nunverified = true\n\n[providers.dev]\nplugin = \"{}\"\nbuf_size = 2048\nsettings = {{ buffers = 8192 }}\n\n[providers.later]\nplugin = \"shm\"\nbuf_size = 2048\nsettings = {{ buffers = 8192 }}\n\n[consumers.app]\nsocket = \"{{dir}}/app.sock\"\nchecksum = true\nquota = 1024\n\n[[route]]\nmatch = {{ l4 = \"tcp\" }}\nhead = \"hdr\"\nfrags = \"dev\"\ndeliver = \"app\"\n\n[[route]]\nmatch = {{ l4 = \"udp\" }}\nhead = \"hdr\"\nfrags = \"later\"\ndeliver = \"app\"\n\n[[route]]\nhead = \"hdr\"\nfrags = \"hdr\"\n",
        so("memplex_fixture_devmem").display()
    );
    let run = Run::start("devmem", &body, 50_000, 2.0);
    let (code, got) = consume(&run.socket("app"), &["--mode", "verify"]);
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    assert_eq!(code, 0, "{got}");
    assert!(u(&got["verified"]) > 1000, "{got}");
    assert_eq!(u(&got["verified"]), u(&got["frames"]), "{got}");
    let c = consumer(&report, "app");
    assert_eq!(u(&c["regions_sent"]), 2, "{c}");
    assert!(
        u(&c["regions_late"]) >= 1,
        "a region announced to a session already delivered frames: {c}"
    );
    // The host may not write devmem (built against ABI 0.1.2): each burst's parts there
    // went to the provider in one fill_gather call, never a fill per part or a fill_bulk
    // per frame.
    let dev = report["total"]["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "dev")
        .unwrap();
    let placed = u(&dev["placed"]["frames"]);
    assert!(placed > 1000, "{dev}");
    assert_eq!(u(&dev["checks"]["fill_calls"]), 0, "{dev}");
    assert_eq!(u(&dev["checks"]["fill_bulk_calls"]), 0, "{dev}");
    let gathers = u(&dev["checks"]["fill_gather_calls"]);
    assert!((1..=placed).contains(&gathers), "{dev}");
    assert_eq!(leaked(&report), 0);
}

#[test]
fn a_failed_gathered_fill_drops_its_frames_and_the_consumer_sees_only_whole_ones() {
    // devmem's 20th fill_gather fails: the frames of that burst are dropped as faults
    // before they are delivered, the frames around them are delivered whole (the
    // consumer verifies every one against its CRC-32), and nothing is lost.
    let body = format!(
        "[providers.hdr]\nplugin = \"heap\"\nbuf_size = 256\nunverified = true\n\n[providers.dev]\nplugin = \"{}\"\nbuf_size = 2048\nsettings = {{ buffers = 8192, fail_fill = 20 }}\n\n[consumers.app]\nsocket = \"{{dir}}/app.sock\"\nchecksum = true\nquota = 1024\n\n[[route]]\nmatch = {{ l4 = \"tcp\" }}\nhead = \"hdr\"\nfrags = \"dev\"\ndeliver = \"app\"\n\n[[route]]\nhead = \"hdr\"\nfrags = \"hdr\"\n",
        so("memplex_fixture_devmem").display()
    );
    let run = Run::start_with_env(
        "gatherfail",
        &body,
        50_000,
        2.0,
        &[("MEMPLEX_RUNTIME__ALLOW_FAULT_DROPS", "true".into())],
    );
    let (code, got) = consume(&run.socket("app"), &["--mode", "verify"]);
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    assert_eq!(code, 0, "{got}");
    assert!(u(&got["verified"]) > 1000, "{got}");
    assert_eq!(u(&got["verified"]), u(&got["frames"]), "{got}");
    let dev = report["total"]["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "dev")
        .unwrap();
    let faults = u(&dev["dropped"]["fault"]);
    assert!((1..=64).contains(&faults), "one burst's frames: {dev}");
    assert_eq!(u(&report["total"]["dropped"]["fault"]), faults, "{report}");
    assert_eq!(dev["quarantined"], 0, "{dev}");
    assert_eq!(leaked(&report), 0);
}

#[test]
fn a_route_delivering_memory_that_cannot_be_shared_is_refused_unless_it_copies() {
    let dir = std::env::temp_dir().join(format!("mpx-refuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let capture = configs("captures/default.pcap");
    let write = |frags: &str, copy: bool| {
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            format!(
                "[device]\nkind = \"pcap\"\npath = \"{capture}\"\n\n[providers.hdr]\nplugin = \"heap\"\nbuf_size = 256\nunverified = true\n\n[providers.f]\nplugin = \"{frags}\"\nbuf_size = 2048\nunverified = true\n\n[consumers.c]\nsocket = \"{}/c.sock\"\nquota = 64\nmax_sessions = 1\n\n[[route]]\nhead = \"hdr\"\nfrags = \"f\"\ndeliver = \"c\"\ncopy = {copy}\n",
                dir.display()
            ),
        )
        .unwrap();
        file.display().to_string()
    };
    for (frags, want) in [
        (
            "heap",
            "its frags provider `f` cannot share its memory: it declares no memory region",
        ),
        ("slab.wasm", "WASM guest's linear memory cannot be shared"),
    ] {
        let (code, out) = memplex_in(
            &["config", "check", &write(frags, false)],
            &build_dir(),
            None,
            &[],
        );
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(want) && out.contains("copy = true"),
            "{frags}: {out}"
        );
    }
    // copy = true is accepted, and frames are counted as copies.
    let (code, out) = memplex_in(
        &["config", "check", &write("heap", true)],
        &build_dir(),
        None,
        &[],
    );
    assert_eq!(code, 0, "{out}");
    // A completion ring too small for a few frames with the largest inline head.
    let small = write("heap", true).replace(".toml", "-small.toml");
    let text = std::fs::read_to_string(write("heap", true)).unwrap();
    std::fs::write(
        &small,
        text.replace(
            "quota = 64",
            "quota = 64\nring_entries = 64\ninline_head = 1024",
        ),
    )
    .unwrap();
    let (code, out) = memplex_in(&["config", "check", &small], &build_dir(), None, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("consumers.c.ring_entries")
            && out.contains("a 1024-byte inline head takes 66 descriptors")
            && out.contains("at least 512"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_copy_route_copies_into_the_ring_and_counts_it() {
    let body = "[providers.hdr]\nplugin = \"heap\"\nbuf_size = 256\nunverified = true\n\n[consumers.c]\nsocket = \"{dir}/c.sock\"\nchecksum = true\nquota = 64\nmax_sessions = 1\n\n[[route]]\nhead = \"hdr\"\nfrags = \"hdr\"\ndeliver = \"c\"\ncopy = true\n";
    let run = Run::start("copy", body, 50_000, 2.0);
    let (code, got) = consume(&run.socket("c"), &["--mode", "verify"]);
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    assert_eq!(code, 0, "{got}");
    let frames = u(&got["frames"]);
    assert!(frames > 1000, "{got}");
    assert_eq!(u(&got["copied"]), frames);
    assert_eq!(u(&got["verified"]), frames);
    assert_eq!(u(&consumer(&report, "c")["copied"]), frames);
}

#[test]
fn the_socket_is_private_and_peers_are_checked() {
    let body = format!(
        "{PROVIDERS}\n[consumers.tcp]\nsocket = \"{{dir}}/tcp.sock\"\n\n[[route]]\nhead = \"hdr\"\nfrags = \"payload\"\ndeliver = \"tcp\"\n"
    );
    let run = Run::start("perms", &body, 10_000, 6.0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(run.socket("tcp"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    // A consumer naming another consumer is refused with the reason.
    let out = Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args(["consume", "--socket", &run.socket("tcp"), "--name", "udp"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("serves consumer `tcp`, not `udp`"), "{err}");
    // A connection that never says Hello delays nobody: a consumer behind it is in at
    // once, and the silent one is told why when its time is up.
    let silent = {
        let fd = rustix::net::socket(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            None,
        )
        .unwrap();
        let addr = rustix::net::SocketAddrUnix::new(run.socket("tcp").as_str()).unwrap();
        rustix::net::connect(&fd, &addr).unwrap();
        fd
    };
    let start = Instant::now();
    let (code, got) = consume(&run.socket("tcp"), &["--frames", "100"]);
    assert_eq!(code, 0, "{got}");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "admitted in {:?} behind a silent connection",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_millis(2300));
    let mut buf = [0u8; 512];
    let (n, _) = rustix::net::recv(&silent, &mut buf, rustix::net::RecvFlags::empty()).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("no Hello within"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    if memplex_testkit::net::privileged() {
        // Another user: not on the allow-list, refused by SO_PEERCRED (the socket mode
        // alone would stop it; open it up to see the credential check answer).
        std::fs::set_permissions(run.socket("tcp"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let dir_mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(&run.dir, dir_mode).unwrap();
        let exe = run.dir.join("memplex");
        std::fs::copy(env!("CARGO_BIN_EXE_memplex"), &exe).unwrap();
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args(["consume", "--socket", &run.socket("tcp")])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("peer uid 65534") && err.contains("allow_uids"),
            "{err}"
        );
    }
    let (rc, _, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
}

#[test]
fn a_polling_consumer_whose_batch_exceeds_its_quota_still_gives_buffers_back() {
    // A quota of 64 and the library's default batch of 128: a consumer that gave its
    // buffers back only by the batch (or after thousands of empty polls) would sit on
    // 64, and memplex would drop what came meanwhile as `consumer_quota`.
    let body = tcp_delivered("quota = 64\nwake = \"busy_poll\"\n");
    let run = Run::start("batch", &body, 50_000, 3.0);
    let opts = memplex_consumer::Options::new("tcp").busy_poll();
    assert_eq!(opts.batch, 128);
    let c = memplex_consumer::Consumer::connect(run.socket("tcp"), &opts).unwrap();
    assert_eq!((c.quota(), c.batch()), (64, 32));
    let mut read = 0u64;
    let mut most = 0;
    while read < 20_000 {
        match c.next(Some(Duration::from_secs(5))).unwrap() {
            Some(f) => {
                assert!(!f.is_empty());
                let q = f.queue();
                drop(f);
                read += 1;
                // Dropped frames' buffers wait for less than a batch, never for the
                // quota: memplex always gets them back before the consumer holds it all.
                let waiting = memplex_consumer::testing::unreturned(&c, q);
                assert!(
                    waiting < c.batch(),
                    "{waiting} buffers held back after {read}"
                );
                most = most.max(waiting);
            }
            None => panic!("no frame within 5 s after {read}"),
        }
    }
    assert_eq!(most, c.batch() - 1, "the buffers go back by the batch");
    c.close();
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    // Every frame read was given back (how many memplex dropped for the quota meanwhile
    // depends on how often this process ran on a loaded machine, so it is not asserted:
    // a consumer that gave back only by the full batch or after 4096 empty polls lost
    // about 650 of 20000 to the quota on an idle one, a good one about 20, and on a
    // loaded one both lose hundreds).
    let returned = u(&report["total"]["consumers"][0]["returned"]);
    assert!(
        returned >= read,
        "{returned} returned, {read} read: {report}"
    );
    assert_eq!(leaked(&report), 0);
}

#[test]
fn the_tokio_consumer_awaits_frames_and_metrics_show_the_consumer() {
    let port = crate::free_port();
    let body = tcp_delivered("checksum = true\n");
    let run = Run::start_with_env(
        "tokio",
        &body,
        50_000,
        3.0,
        &[("MEMPLEX_RUNTIME__METRICS", format!("127.0.0.1:{port}"))],
    );
    let socket = run.socket("tcp");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let verified = rt.block_on(async {
        let c = memplex_consumer::AsyncConsumer::connect(
            &socket,
            &memplex_consumer::Options::new("tcp"),
        )
        .unwrap();
        let mut verified = 0;
        while verified < 3000 {
            let f = tokio::time::timeout(Duration::from_secs(5), c.next())
                .await
                .expect("a frame within 5 s")
                .unwrap();
            assert_eq!(f.verify(), Some(true));
            verified += 1;
        }
        // Then by the burst, at most 5 a call.
        let mut most = 0;
        while verified < 6000 {
            let mut bad = 0;
            let n = tokio::time::timeout(
                Duration::from_secs(5),
                c.next_burst(5, |f| bad += usize::from(f.verify() != Some(true))),
            )
            .await
            .expect("frames within 5 s")
            .unwrap();
            assert_eq!(bad, 0, "frames whose checksum did not match");
            assert!((1..=5).contains(&n), "a burst of {n}");
            most = most.max(n);
            verified += n;
        }
        c.close();
        (verified, most)
    });
    let (verified, most) = verified;
    assert!(verified >= 6000);
    assert!(
        most > 1,
        "frames came one at a time: bursts were never filled"
    );
    // The live metrics carry the consumer's counters (published every 100 ms).
    std::thread::sleep(Duration::from_millis(500));
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    for want in [
        "memplex_consumer_frames_total{queue=",
        "consumer=\"tcp\"",
        "# TYPE memplex_consumer_lent gauge",
        "memplex_consumer_disconnects_total{",
    ] {
        assert!(metrics.contains(want), "`{want}` in:\n{metrics}");
    }
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    assert!(u(&consumer(&report, "tcp")["frames"]) >= 6000);
    assert_eq!(leaked(&report), 0);
}

/// A consumer started before memplex waits for its socket (`--wait`) and then reads
/// frames; without `--wait`, a missing socket is an error that says what to check.
#[test]
fn a_consumer_started_first_waits_for_the_socket() {
    let (code, out) = {
        let out = Command::new(env!("CARGO_BIN_EXE_memplex"))
            .args(["consume", "--socket", "/nonexistent/memplex.sock"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("/nonexistent/memplex.sock") && out.contains("--wait"),
        "{out}"
    );
    let test = "wait-first";
    let socket = std::env::temp_dir()
        .join(format!("mpx-{test}-{}", std::process::id()))
        .join("tcp.sock");
    let consume = Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args([
            "consume",
            "--json",
            "--wait",
            "20",
            "--seconds",
            "1",
            "--socket",
        ])
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it find nothing for a while first.
    std::thread::sleep(Duration::from_millis(300));
    let body = tcp_delivered("");
    let run = Run::start(test, &body, 20_000, 3.0);
    assert_eq!(run.socket("tcp"), socket.display().to_string());
    let out = consume.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = text
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no report: {text}"));
    assert!(u(&got["frames"]) > 0, "{got}");
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    assert_eq!(leaked(&report), 0, "{report}");
}

/// A consumer whose pcap cannot be written (a full disk) stops, says why, and gives
/// back every buffer it held; the host runs on and leaks nothing.
#[test]
fn a_consumer_writing_its_pcap_to_a_full_disk_stops_with_the_reason_and_gives_everything_back() {
    let body = tcp_delivered("");
    let run = Run::start("full-disk", &body, 20_000, 2.0);
    let out = Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args(["consume", "--socket", &run.socket("tcp")])
        .args(["--mode", "pcap", "--out", "/dev/full", "--seconds", "5"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("writing the pcap: No space left on device") && !err.contains("reading"),
        "{err}"
    );
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    let c = consumer(&report, "tcp");
    assert!(u(&c["frames"]) > 0, "{c}");
    assert_eq!(u(&c["lent"]), 0, "{c}");
    assert_eq!(leaked(&report), 0, "{report}");
    assert!(
        u(&report["total"]["received"]["frames"]) > u(&c["frames"]),
        "{report}"
    );
}

#[test]
fn wake_ups_are_one_per_batch_at_most_and_none_for_a_polling_consumer_and_pcap_keeps_the_frames() {
    let body = |wake: &str| tcp_delivered(&format!("wake = \"{wake}\"\n"));
    // A consumer sleeping on its eventfd at a modest rate: woken, once per batch at most.
    let run = Run::start("wake-eventfd", &body("eventfd"), 20_000, 2.0);
    let out = run.dir.join("out.pcap");
    let (code, got) = consume(
        &run.socket("tcp"),
        &["--mode", "pcap", "--out", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{got}");
    // The pcap holds what the consumer read, with the capture's nanosecond timestamps.
    let file = std::fs::File::open(&out).unwrap();
    let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap();
    assert_eq!(
        reader.header().ts_resolution,
        pcap_file::TsResolution::NanoSecond
    );
    let mut packets = 0;
    while let Some(p) = reader.next_packet() {
        let p = p.unwrap();
        assert!(
            p.data.len() >= 54,
            "a whole TCP frame: {} bytes",
            p.data.len()
        );
        assert_eq!(p.data.len(), p.orig_len as usize);
        let ethertype = u16::from_be_bytes([p.data[12], p.data[13]]);
        assert!(
            [0x0800, 0x86dd, 0x8100].contains(&ethertype),
            "an Ethernet frame of IP: {ethertype:#x}"
        );
        packets += 1;
    }
    assert_eq!(packets, u(&got["frames"]), "{got}");
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    let c = consumer(&report, "tcp");
    assert!(u(&c["wakeups"]) > 0, "{c}");
    assert!(u(&c["wakeups"]) <= u(&c["batches"]), "{c}");
    // A polling consumer on a host that offers no eventfds: no wake-up at all.
    let run = Run::start("wake-poll", &body("busy_poll"), 20_000, 2.0);
    let (code, got) = consume(&run.socket("tcp"), &["--busy-poll"]);
    assert_eq!(code, 0, "{got}");
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    let c = consumer(&report, "tcp");
    assert!(u(&c["batches"]) > 0 && u(&c["frames"]) > 0, "{c}");
    assert_eq!(u(&c["wakeups"]), 0, "{c}");
    // An eventfd consumer that polls for a second before it sleeps: frames come every
    // 50 us, so it never asks to be woken, and memplex never writes its eventfd.
    let run = Run::start("wake-spin", &body("eventfd"), 20_000, 2.0);
    let (code, got) = consume(&run.socket("tcp"), &["--spin-us", "1000000"]);
    assert_eq!(code, 0, "{got}");
    let (rc, report, err) = run.finish();
    assert_eq!(rc, 0, "{err}");
    let c = consumer(&report, "tcp");
    assert!(u(&c["frames"]) > 1000, "{c}");
    assert_eq!(u(&c["wakeups"]), 0, "{c}");
    // It cannot be asked of a busy-polling consumer, which never sleeps.
    let out = Command::new(env!("CARGO_BIN_EXE_memplex"))
        .args([
            "consume",
            "--socket",
            "/nonexistent.sock",
            "--busy-poll",
            "--spin-us",
            "5",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--spin-us") && err.contains("--busy-poll"),
        "{err}"
    );
}
