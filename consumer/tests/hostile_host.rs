//! The consumer library against a host that is not memplex: a peer on the socket that
//! speaks the protocol's set-up as memplex does, then sends what memplex never would. The
//! library must refuse it with an error that names what was wrong, and must neither map
//! memory that could vanish under it nor read outside what it mapped.

use memplex_consumer::{Consumer, Error, Options};
use memplex_proto::layout::{Desc, RingKind, Token};
use memplex_proto::msg::{self, Kind};
use memplex_proto::ring::{ChannelMap, Producer};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{AddressFamily, RecvFlags, SocketAddrUnix, SocketFlags, SocketType};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A listening SOCK_SEQPACKET socket at a path of this test's own, removed on drop.
struct Listener {
    sock: OwnedFd,
    path: PathBuf,
}

impl Listener {
    fn new(name: &str) -> Listener {
        let path = std::env::temp_dir().join(format!(
            "memplex-hostile-host-{name}-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("a socket");
        rustix::net::bind(&sock, &SocketAddrUnix::new(&path).expect("a path")).expect("bound");
        rustix::net::listen(&sock, 1).expect("listening");
        Listener { sock, path }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

const REGION_LEN: u64 = 4096;

/// A memfd of [`REGION_LEN`] bytes, each byte its offset's low 8 bits, carrying `seals`.
fn memfd(seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create("memplex-hostile-host", MemfdFlags::ALLOW_SEALING)
        .expect("a memfd");
    let bytes: Vec<u8> = (0..REGION_LEN).map(|i| i as u8).collect();
    rustix::io::write(&fd, &bytes).expect("written");
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).expect("sealed");
    }
    fd
}

/// A part of `region`: `len` bytes at `offset`, with `more` when the frame goes on.
fn part(region: u16, offset: u64, len: u32, more: bool) -> Desc {
    let token = Token {
        id: 0,
        generation: 1,
        region,
    };
    Desc::part(token, offset, len, more)
}

/// Plays the host for one session on `listener`: the set-up as memplex does it (one
/// queue, busy-polled), then region 0 (of provider `bad`) in `region`, then `descs`
/// published on the completion ring, then waits for the consumer to hang up, keeping the
/// channel mapped until then.
fn serve(listener: &Listener, region: OwnedFd, descs: Vec<Desc>) -> std::thread::JoinHandle<()> {
    let listening = listener.sock.try_clone().expect("a duplicate");
    std::thread::spawn(move || {
        let sock = rustix::net::accept(&listening).expect("a consumer");
        let mut buf = [0u8; msg::MAX_MSG];
        let (n, _) = msg::recv(&sock, &mut buf, RecvFlags::empty())
            .expect("a message")
            .expect("a Hello");
        assert_eq!(msg::decode(&buf[..n]).expect("decoded").0, Kind::Hello);
        let welcome = msg::Welcome {
            version: memplex_proto::VERSION,
            queues: 1,
            session: 1,
            quota: 64,
            checksums: 0,
            features: 0,
            reserved: 0,
        };
        msg::send(&sock, Kind::Welcome, &welcome, &[]).expect("sent");
        let (map, channel) = ChannelMap::create(0, 64, 64, 0, false).expect("a channel");
        let map = Arc::new(map);
        let body = msg::Channel {
            queue: 0,
            eventfd: 0,
            len: map.len() as u64,
        };
        msg::send(&sock, Kind::Channel, &body, &[channel.as_fd()]).expect("sent");
        let ready = msg::Header {
            magic: msg::MAGIC,
            kind: 0,
        };
        msg::send(&sock, Kind::Ready, &ready, &[]).expect("sent");
        let body = msg::Region {
            index: 0,
            kind: 1,
            len: REGION_LEN,
            offset: 0,
            provider: msg::fixed("bad"),
        };
        msg::send(&sock, Kind::Region, &body, &[region.as_fd()]).expect("sent");
        let mut completion = Producer::new(map.ring(RingKind::Completion));
        for (i, d) in descs.iter().enumerate() {
            completion.write(i as u32, d);
        }
        completion.publish(descs.len() as u32);
        // Until the consumer hangs up (or a minute passes, if it never does).
        let _ = rustix::net::sockopt::set_socket_timeout(
            &sock,
            rustix::net::sockopt::Timeout::Recv,
            Some(Duration::from_secs(60)),
        );
        while let Ok(Some(_)) = msg::recv(&sock, &mut buf, RecvFlags::empty()) {}
        drop(map);
    })
}

/// A session with the fake host: `region`'s memfd and `descs`, read until `check` has a
/// frame's bytes or an error (or 20 s pass), then closed.
fn session(
    name: &str,
    region: OwnedFd,
    descs: Vec<Desc>,
    check: impl FnOnce(&Consumer, Result<Vec<u8>, Error>),
) {
    let listener = Listener::new(name);
    let host = serve(&listener, region, descs);
    let consumer = Consumer::connect(&listener.path, &Options::new("probe").busy_poll())
        .expect("the set-up is memplex's own");
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        match consumer.next(Some(Duration::from_millis(50))) {
            Ok(Some(frame)) => {
                let mut bytes = Vec::new();
                frame.copy_to(&mut bytes);
                break Ok(bytes);
            }
            Ok(None) => assert!(Instant::now() < deadline, "{name}: nothing in 20 s"),
            Err(e) => break Err(e),
        }
    };
    check(&consumer, got);
    consumer.close();
    host.join().expect("the fake host");
}

fn refused(what: &str, got: Result<Vec<u8>, Error>, want: &[&str]) {
    let text = match got {
        Ok(bytes) => panic!("{what}: read a frame of {} bytes", bytes.len()),
        Err(e) => e.to_string(),
    };
    assert!(want.iter().all(|w| text.contains(w)), "{what}: {text}");
}

#[test]
fn a_frame_in_a_sealed_region_reads_its_bytes_in_place() {
    let descs = vec![part(0, 100, 50, true), part(0, 4000, 96, false)];
    session("good", memfd(SealFlags::SHRINK), descs, |c, got| {
        let want: Vec<u8> = (100..150).chain(4000..4096).map(|i| i as u8).collect();
        assert_eq!(got.expect("a frame"), want);
        assert_eq!(memplex_consumer::testing::mapped_regions(c), 1);
    });
}

#[test]
fn a_region_that_could_shrink_under_the_mapping_is_refused() {
    for (seals, what) in [
        (SealFlags::empty(), "unsealed"),
        (SealFlags::GROW, "sealed only against growing"),
    ] {
        let descs = vec![part(0, 0, 64, false)];
        session(
            &format!("unsealed-{}", seals.bits()),
            memfd(seals),
            descs,
            |c, got| {
                refused(
                    what,
                    got,
                    &["region 0 of provider `bad`", "not sealed against shrinking"],
                );
                assert_eq!(memplex_consumer::testing::mapped_regions(c), 0);
            },
        );
    }
}

#[test]
fn a_part_past_its_region_is_refused() {
    let descs = vec![part(0, 4000, 200, false)];
    session("past", memfd(SealFlags::SHRINK), descs, |_, got| {
        refused(
            "past",
            got,
            &["a part at 4000+200 past region 0's 4096 bytes"],
        );
    });
}

#[test]
fn a_part_in_a_region_never_announced_is_refused() {
    let descs = vec![part(7, 0, 64, false)];
    session("unknown", memfd(SealFlags::SHRINK), descs, |_, got| {
        refused("unknown", got, &["region 7 was never announced"]);
    });
}

#[test]
fn a_frame_past_the_descriptors_published_is_refused() {
    let descs = vec![part(0, 0, 64, true)];
    session("unended", memfd(SealFlags::SHRINK), descs, |_, got| {
        refused("unended", got, &["runs past the 1 descriptors published"]);
    });
}
