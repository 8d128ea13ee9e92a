//! The consumer library against a host that is not memplex: a peer on the socket that
//! speaks the protocol's set-up, then sends what memplex never would. The library must
//! refuse it with an error that names what was wrong, and must not map it.

use memplex_consumer::{Consumer, Error, Options};
use memplex_proto::msg::{self, Kind};
use memplex_proto::ring::ChannelMap;
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{AddressFamily, RecvFlags, SocketAddrUnix, SocketFlags, SocketType};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

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

/// A memfd of `len` bytes carrying `seals`.
fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create("memplex-hostile-host", MemfdFlags::ALLOW_SEALING)
        .expect("a memfd");
    rustix::fs::ftruncate(&fd, len).expect("sized");
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).expect("sealed");
    }
    fd
}

/// Plays the host for one session on `listener`: the set-up as memplex does it (one
/// queue, busy-polled), then a region of provider `bad` in `region`, then waits for the
/// consumer to hang up, keeping the channel mapped until then.
fn serve(listener: &Listener, region: OwnedFd) -> std::thread::JoinHandle<()> {
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
            len: 4096,
            offset: 0,
            provider: msg::fixed("bad"),
        };
        msg::send(&sock, Kind::Region, &body, &[region.as_fd()]).expect("sent");
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

/// Reads until the region is handled: an error, or nothing for `wait`.
fn read(consumer: &Consumer, wait: Duration) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if consumer.next(Some(Duration::from_millis(50)))?.is_some() {
            panic!("the fake host sent no frame");
        }
    }
    Ok(())
}

#[test]
fn a_region_that_could_shrink_under_the_mapping_is_refused() {
    for (seals, what) in [
        (SealFlags::empty(), "unsealed"),
        (SealFlags::GROW, "sealed only against growing"),
    ] {
        let listener = Listener::new(&format!("{}", seals.bits()));
        let host = serve(&listener, memfd(4096, seals));
        let consumer = Consumer::connect(&listener.path, &Options::new("probe").busy_poll())
            .expect("the set-up is memplex's own");
        let err = read(&consumer, Duration::from_secs(20))
            .expect_err(&format!("an {what} region was mapped"));
        let text = err.to_string();
        assert!(
            text.contains("region 0 of provider `bad`")
                && text.contains("not sealed against shrinking"),
            "{what}: {text}"
        );
        assert_eq!(memplex_consumer::testing::mapped_regions(&consumer), 0);
        consumer.close();
        host.join().expect("the fake host");
    }
}

#[test]
fn a_region_sealed_against_shrinking_is_mapped() {
    let listener = Listener::new("sealed");
    let host = serve(&listener, memfd(4096, SealFlags::SHRINK | SealFlags::GROW));
    let consumer = Consumer::connect(&listener.path, &Options::new("probe").busy_poll())
        .expect("the set-up is memplex's own");
    // The library reads the socket every 4096 idle spins: until it has the region.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while memplex_consumer::testing::mapped_regions(&consumer) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the region never came"
        );
        read(&consumer, Duration::from_millis(50)).expect("a sealed region is taken");
    }
    assert_eq!(memplex_consumer::testing::mapped_regions(&consumer), 1);
    consumer.close();
    host.join().expect("the fake host");
}
