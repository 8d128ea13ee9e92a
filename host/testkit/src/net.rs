//! Test hosts in network namespaces, for the TAP integration tests and `memplex demo`.
//!
//! [`TestNet::create`] makes two namespaces joined by a veth pair, with addresses only
//! inside them (IPv4, IPv6 and a VLAN), and a multi-queue TAP device in the first that
//! receives a mirror of everything the first host sends (`tc ... action mirred egress
//! mirror`): real kernel traffic, a real TCP stream with GSO super-frames included,
//! arrives on the TAP as it would on a NIC.
//!
//! ```text
//!  netns A                                     netns B
//!  10.77.0.1 fd6d::1                           10.77.0.2 fd6d::2
//!  10.78.0.1 (va.100, VLAN 100)                10.78.0.2 (vb.100)
//!  10.79.0.1 (vx10, VXLAN VNI 10)              10.79.0.2 (vx10)
//!  va ──────────────── veth ───────────────── vb
//!   └─ tc egress u32 (all) mirred mirror ─> mpx0 (TAP) ─> memplex
//! ```
//!
//! Kernels built without 802.1Q (`CONFIG_VLAN_8021Q`) cannot make VLAN devices; then
//! [`TestNet::vlan_device`] is false and VLAN traffic has to be sent as raw tagged frames
//! with [`TestNet::send_raw`], which still crosses the veth and the mirror.
//!
//! Everything is removed when the [`TestNet`] is dropped, also when a test panics;
//! namespaces left by a killed process are named `mpx-*` and removed by
//! [`TestNet::sweep_stale`].
//!
//! One of the few modules allowed `unsafe`: `setns(2)` and a raw `AF_PACKET` socket.
#![allow(
    unsafe_code,
    reason = "setns(2) and AF_PACKET sockets for the test network"
)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why the test network could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Not running as root (or without CAP_NET_ADMIN).
    #[error("needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_SYS_ADMIN (root has them, unless a container took them away) to create network namespaces, veth pairs and TAP devices")]
    NotPrivileged,
    /// A command failed.
    #[error("`{command}` failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
    /// A system call failed.
    #[error("{what}: {cause}")]
    Sys {
        /// The call.
        what: String,
        /// What the system said.
        cause: std::io::Error,
    },
}

/// Addresses inside the test namespaces.
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};
    /// Host A on the veth.
    pub const A4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    /// Host B on the veth.
    pub const B4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    /// Host A on VLAN 100.
    pub const A4_VLAN: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
    /// Host B on VLAN 100.
    pub const B4_VLAN: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
    /// Host A, IPv6.
    pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd6d, 0, 0, 0, 0, 0, 0, 1);
    /// Host B, IPv6.
    pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd6d, 0, 0, 0, 0, 0, 0, 2);
    /// Host A inside VXLAN VNI 10.
    pub const A4_VXLAN: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
    /// Host B inside VXLAN VNI 10.
    pub const B4_VXLAN: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 2);
    /// The VLAN id.
    pub const VLAN: u16 = 100;
}

/// Two namespaces, a veth pair and a mirrored TAP device. See the module docs.
#[derive(Debug)]
pub struct TestNet {
    /// Namespace of host A (and the TAP).
    pub ns_a: String,
    /// Namespace of host B.
    pub ns_b: String,
    /// The TAP device's name (in `ns_a`).
    pub tap: String,
    /// Host A's veth end (in `ns_a`).
    pub veth_a: String,
    /// Host B's veth end (in `ns_b`).
    pub veth_b: String,
    /// Whether the VLAN 100 devices exist (the kernel has 802.1Q).
    pub vlan_device: bool,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| NetError::Command {
            command: args.join(" "),
            output: format!("could not start {}: {e} (is iproute2 installed?)", args[0]),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetError::Command {
        command: args.join(" "),
        output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// True when this process may build the test network.
pub fn privileged() -> bool {
    has_capabilities(&[CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN])
}

/// CAP_NET_ADMIN: network devices, namespaces' links, tc.
pub const CAP_NET_ADMIN: u32 = 12;
/// CAP_NET_RAW: packet sockets.
pub const CAP_NET_RAW: u32 = 13;
/// CAP_SYS_ADMIN: creating and entering network namespaces.
pub const CAP_SYS_ADMIN: u32 = 21;

/// True when this process's effective capabilities (`CapEff` in /proc/self/status) hold
/// every one of `caps`: what creating namespaces, devices and raw sockets takes, whether
/// or not the user is root (a root process may lack them in a container; a non-root one
/// may hold them).
pub fn has_capabilities(caps: &[u32]) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    caps.iter().all(|&c| eff & (1 << c) != 0)
}

impl TestNet {
    /// Builds the network; `queues` is the TAP's queue count (the reader attaches them).
    pub fn create(queues: u16) -> Result<TestNet, NetError> {
        let id = fresh_id()?;
        let mut net = TestNet {
            ns_a: format!("{id}-a"),
            ns_b: format!("{id}-b"),
            tap: "mpx0".into(),
            veth_a: "va".into(),
            veth_b: "vb".into(),
            vlan_device: false,
        };
        // If any step fails, dropping `net` removes what was made so far.
        net.vlan_device = net.build(queues)?;
        Ok(net)
    }

    /// Builds everything; returns whether VLAN devices could be made.
    fn build(&self, _queues: u16) -> Result<bool, NetError> {
        let (a, b) = (self.ns_a.as_str(), self.ns_b.as_str());
        run(&["ip", "netns", "add", a])?;
        run(&["ip", "netns", "add", b])?;
        for ns in [a, b] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        run(&[
            "ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b,
        ])?;
        let mut vlan = true;
        for (ns, dev, me, peer, v6, vlan4, vx4) in [
            (
                a,
                "va",
                "10.77.0.1",
                "10.77.0.2",
                "fd6d::1/64",
                "10.78.0.1/24",
                "10.79.0.1/24",
            ),
            (
                b,
                "vb",
                "10.77.0.2",
                "10.77.0.1",
                "fd6d::2/64",
                "10.78.0.2/24",
                "10.79.0.2/24",
            ),
        ] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{me}/24"),
                "dev",
                dev,
            ])?;
            run(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            run(&["ip", "-n", ns, "link", "set", "dev", dev, "up"])?;
            let sub = format!("{dev}.100");
            match run(&[
                "ip", "-n", ns, "link", "add", "link", dev, "name", &sub, "type", "vlan", "id",
                "100",
            ]) {
                Ok(()) => {
                    run(&["ip", "-n", ns, "addr", "add", vlan4, "dev", &sub])?;
                    run(&["ip", "-n", ns, "link", "set", &sub, "up"])?;
                }
                Err(NetError::Command { output, .. }) if output.contains("Unknown device type") => {
                    vlan = false
                }
                Err(e) => return Err(e),
            }
            run(&[
                "ip", "-n", ns, "link", "add", "vx10", "type", "vxlan", "id", "10", "local", me,
                "remote", peer, "dstport", "4789", "dev", dev,
            ])?;
            run(&["ip", "-n", ns, "addr", "add", vx4, "dev", "vx10"])?;
            run(&["ip", "-n", ns, "link", "set", "vx10", "up"])?;
        }
        run(&[
            "ip",
            "-n",
            a,
            "tuntap",
            "add",
            "dev",
            &self.tap,
            "mode",
            "tap",
            "multi_queue",
            "vnet_hdr",
        ])?;
        run(&["ip", "-n", a, "link", "set", &self.tap, "up"])?;
        run(&[
            "ip", "netns", "exec", a, "tc", "qdisc", "add", "dev", "va", "clsact",
        ])?;
        // `u32 match u32 0 0` matches every frame and exists where matchall is not built.
        run(&[
            "ip", "netns", "exec", a, "tc", "filter", "add", "dev", "va", "egress", "u32", "match",
            "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", &self.tap,
        ])?;
        Ok(vlan)
    }

    /// Runs `f` on a thread inside namespace `ns` and returns its result. Sockets and
    /// devices opened there stay in that namespace.
    pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(ns)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Sends raw Ethernet frames out of `dev` in namespace `ns` (a packet socket), for
    /// injecting malformed frames.
    pub fn send_raw(ns: &str, dev: &str, frames: &[Vec<u8>]) -> Result<(), NetError> {
        Self::in_ns(ns, || send_raw(dev, frames))?
    }

    /// Frames the kernel dropped on the TAP because its reader fell behind (`tx_dropped`).
    pub fn tap_dropped(&self) -> u64 {
        let out = Command::new("ip")
            .args(["-n", &self.ns_a, "-s", "-j", "link", "show", &self.tap])
            .output();
        out.ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v[0]["stats64"]["tx"]["dropped"].as_u64())
            .unwrap_or(0)
    }

    /// Removes `mpx-*` namespaces whose process is gone (left by a killed run).
    pub fn sweep_stale() {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("mpx-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = run(&["ip", "netns", "del", &name]);
            }
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting a namespace removes the veth pair, the VLANs, the TAP and the filter.
        remove_namespaces(&[&self.ns_a, &self.ns_b]);
    }
}

/// A name prefix for this process's next namespaces (`mpx-PID-N`, which
/// [`TestNet::sweep_stale`] recognises), once the process may make them.
fn fresh_id() -> Result<String, NetError> {
    if !privileged() {
        return Err(NetError::NotPrivileged);
    }
    Ok(format!(
        "mpx-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Deletes namespaces, and with them every device in them; one already gone is fine.
fn remove_namespaces(names: &[&str]) {
    for ns in names {
        if let Err(e) = run(&["ip", "netns", "del", ns]) {
            if !e.to_string().contains("No such file") {
                eprintln!("memplex testnet: cleaning up {ns}: {e}");
            }
        }
    }
}

fn enter(ns: &str) -> Result<(), NetError> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).map_err(|e| NetError::Sys {
        what: format!("open {path}"),
        cause: e,
    })?;
    // SAFETY: setns takes a valid namespace fd (open for the call) and a namespace type;
    // it only changes the calling thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetError::Sys {
            what: format!("setns({ns})"),
            cause: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Sends `frames` round and round out of `dev` (this namespace) until `until`, in
/// batches of 64 with one `sendmmsg(2)` each, on a packet socket that bypasses the
/// qdisc; at most `rate` frames per second when given. Returns the frames sent. A full
/// device queue (ENOBUFS) is part of a flood, not an error: the batch is retried.
pub fn blast<F: AsRef<[u8]>>(
    dev: &str,
    frames: &[F],
    until: std::time::Instant,
    rate: Option<u64>,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<u64, NetError> {
    const BATCH: usize = 64;
    if frames.is_empty() {
        return Ok(0);
    }
    let sys = |what: &str| NetError::Sys {
        what: what.to_string(),
        cause: std::io::Error::last_os_error(),
    };
    let (fd, sll) = packet_socket(dev)?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a live local; the fd is open.
    let _ = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    let mut iov: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ref().as_ptr() as *mut libc::c_void,
            iov_len: f.as_ref().len(),
        })
        .collect();
    let start = std::time::Instant::now();
    let mut sent = 0u64;
    let mut next = 0usize;
    while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
        if let Some(r) = rate.filter(|&r| r > 0) {
            let due = (start.elapsed().as_secs_f64() * r as f64) as u64;
            if due < sent + BATCH as u64 {
                std::thread::sleep(std::time::Duration::from_micros(200));
                continue;
            }
        }
        // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for m in msgs.iter_mut() {
            m.msg_hdr.msg_name = std::ptr::from_ref(&sll) as *mut libc::c_void;
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            m.msg_hdr.msg_iov = &mut iov[next];
            m.msg_hdr.msg_iovlen = 1;
            next = (next + 1) % frames.len();
        }
        // SAFETY: every header points at a live iovec over a live frame and at `sll`,
        // all of which outlive the call; the fd is open.
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        match n {
            n if n >= 0 => sent += n as u64,
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) => {
                std::thread::yield_now()
            }
            _ => return Err(sys(&format!("sendmmsg on {dev}"))),
        }
    }
    Ok(sent)
}

/// A raw packet socket and the address to send out of `dev` with.
fn packet_socket(dev: &str) -> Result<(OwnedFd, libc::sockaddr_ll), NetError> {
    let sys = |what: &str| NetError::Sys {
        what: what.to_string(),
        cause: std::io::Error::last_os_error(),
    };
    let name = std::ffi::CString::new(dev).map_err(|_| NetError::Sys {
        what: format!("interface {dev:?}"),
        cause: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that lives for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(sys(&format!("if_nametoindex({dev})")));
    }
    // SAFETY: socket(2) with constant arguments; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys("socket(AF_PACKET)"));
    }
    // SAFETY: fd is a freshly created socket that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = index as i32;
    sll.sll_halen = 6;
    Ok((fd, sll))
}

fn send_raw(dev: &str, frames: &[Vec<u8>]) -> Result<(), NetError> {
    let sys = |what: &str| NetError::Sys {
        what: what.to_string(),
        cause: std::io::Error::last_os_error(),
    };
    let (fd, sll) = packet_socket(dev)?;
    for f in frames {
        // SAFETY: `f` is a live byte slice of the given length, and `sll` a valid
        // sockaddr_ll whose size is passed; the fd is open.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                std::ptr::from_ref(&sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(sys(&format!("sendto on {dev}")));
        }
    }
    Ok(())
}

/// What [`TestNet::send_mix`] sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MixSent {
    /// Bytes of the TCP stream that host B received.
    pub tcp_bytes: usize,
    /// UDP datagrams sent over IPv4, IPv6 and VXLAN.
    pub udp: usize,
    /// VLAN 100 frames (over a VLAN device, or raw when the kernel has none).
    pub vlan: usize,
}

impl TestNet {
    /// Sends the traffic mix from host A to host B: a TCP stream of `tcp_bytes` bytes
    /// (the kernel segments it, so GSO super-frames reach the TAP), UDP flows on 8
    /// source ports over IPv4, IPv6 and VXLAN, and UDP on VLAN 100. Stops early when
    /// `stop` is set. Every socket is bounded by timeouts, so this never hangs.
    pub fn send_mix(
        &self,
        tcp_bytes: usize,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<MixSent, NetError> {
        use std::io::{Read, Write};
        use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
        use std::time::Duration;
        fn io(what: &'static str) -> impl Fn(std::io::Error) -> NetError {
            move |e| NetError::Sys {
                what: what.to_string(),
                cause: e,
            }
        }
        let mut targets = vec![
            SocketAddr::from((addr::B4, 9000)),
            SocketAddr::from((addr::B6, 9000)),
            SocketAddr::from((addr::B4_VXLAN, 9000)),
        ];
        if self.vlan_device {
            targets.push(SocketAddr::from((addr::B4_VLAN, 9000)));
        }
        let listener = Self::in_ns(&self.ns_b, || TcpListener::bind((addr::B4, 5201)))?
            .map_err(io("listen on host B"))?;
        let receivers = Self::in_ns(&self.ns_b, || {
            targets
                .iter()
                .map(UdpSocket::bind)
                .collect::<Result<Vec<_>, _>>()
        })?
        .map_err(io("bind UDP on host B"))?;
        let mut sent = MixSent::default();
        std::thread::scope(|s| -> Result<(), NetError> {
            let server = s.spawn(move || -> std::io::Result<usize> {
                listener.set_nonblocking(false)?;
                let (mut c, _) = listener.accept()?;
                c.set_read_timeout(Some(Duration::from_secs(20)))?;
                let mut buf = vec![0; 1 << 16];
                let mut total = 0;
                loop {
                    match c.read(&mut buf)? {
                        0 => return Ok(total),
                        n => total += n,
                    }
                }
            });
            let udp = Self::in_ns(&self.ns_a, || -> std::io::Result<usize> {
                let mut c = TcpStream::connect_timeout(
                    &SocketAddr::from((addr::B4, 5201)),
                    Duration::from_secs(5),
                )?;
                c.set_write_timeout(Some(Duration::from_secs(20)))?;
                let chunk: Vec<u8> = (0..1 << 16).map(|i| (i * 7) as u8).collect();
                let mut left = tcp_bytes;
                while left > 0 && !stop.load(Ordering::Relaxed) {
                    let n = left.min(chunk.len());
                    c.write_all(&chunk[..n])?;
                    left -= n;
                }
                drop(c);
                let mut udp = 0;
                for port in 0..8u16 {
                    for target in &targets {
                        let src: IpAddr = match target.ip() {
                            IpAddr::V6(_) => addr::A6.into(),
                            ip if ip == addr::B4_VLAN => addr::A4_VLAN.into(),
                            ip if ip == addr::B4_VXLAN => addr::A4_VXLAN.into(),
                            _ => addr::A4.into(),
                        };
                        let sock = UdpSocket::bind((src, 41000 + port))?;
                        for i in 0..25usize {
                            sock.send_to(&vec![i as u8; 16 + (i * 57) % 1400], target)?;
                            udp += 1;
                        }
                    }
                }
                Ok(udp)
            })?
            .map_err(io("send from host A"))?;
            sent.udp = udp;
            sent.tcp_bytes = server
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
                .map_err(io("receive on host B"))?;
            Ok(())
        })?;
        drop(receivers);
        if self.vlan_device {
            sent.vlan = 8 * 25;
            sent.udp -= sent.vlan;
        } else {
            let frames = vlan_frames();
            Self::send_raw(&self.ns_a, &self.veth_a, &frames)?;
            sent.vlan = frames.len();
        }
        Ok(sent)
    }
}

/// 200 UDP frames on VLAN 100 over 8 flows, for kernels without VLAN devices.
fn vlan_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for port in 0..8u16 {
        for i in 0..25usize {
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .single_vlan(etherparse::VlanId::try_new(addr::VLAN).expect("valid VLAN id"))
                .ipv4(addr::A4_VLAN.octets(), addr::B4_VLAN.octets(), 64)
                .udp(42000 + port, 9000)
                .write(&mut f, &vec![i as u8; 16 + (i * 57) % 1400])
                .expect("valid frame");
            out.push(f);
        }
    }
    out
}

/// Addresses of the two hosts of a [`ForwardNet`], inside its namespaces.
pub mod fwd_addr {
    use std::net::{Ipv4Addr, Ipv6Addr};
    /// Host A on its TAP.
    pub const A4: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 1);
    /// Host B on its TAP.
    pub const B4: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 2);
    /// Host A, IPv6.
    pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd6e, 0, 0, 0, 0, 0, 0, 1);
    /// Host B, IPv6.
    pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd6e, 0, 0, 0, 0, 0, 0, 2);
}

/// Two namespaces whose only link runs through memplex, in one of two shapes:
///
/// - [`ForwardNet::create`]: host A's interface is a TAP (`taPID-N`) and host B's
///   another (`tbPID-N`), each multi-queue with vnet headers. What A's stack sends on its TAP is what
///   memplex reads there; what memplex writes to B's TAP arrives at B's stack. Each TAP
///   is opened from inside its host's namespace.
/// - [`ForwardNet::create_veth`]: each host has a veth whose peer (`ma`, `mb`) sits in a
///   third namespace, where memplex reads and writes both peers with AF_PACKET, as it
///   would two NICs. With `offloads`, the hosts' veths keep the kernel's offloads, so
///   TCP sends GSO super-frames with partial checksums (memplex must open its sockets
///   with `gso = true` to carry them); without, they send finished frames, as frames
///   arrive from a wire.
///
/// ```text
///  netns A (10.80.0.1, fd6e::1)        memplex          netns B (10.80.0.2, fd6e::2)
///  stack ── TAP a ──read/writev── forward ──read/writev── TAP b ── stack
///  stack ── va ═ veth ═ ma (netns M) ─ AF_PACKET ─ mb (netns M) ═ veth ═ vb ── stack
/// ```
///
/// Open side A's device in [`ns_dev_a`](Self::ns_dev_a) and side B's in
/// [`ns_dev_b`](Self::ns_dev_b) ([`TestNet::in_ns`]). Everything is removed on drop,
/// also when a test panics.
#[derive(Debug)]
pub struct ForwardNet {
    /// Host A's namespace.
    pub ns_a: String,
    /// Host B's namespace.
    pub ns_b: String,
    /// The namespace memplex's devices are in, for the veth shape.
    pub ns_m: Option<String>,
    /// The interface memplex reads for side A (a TAP, or `ma`).
    pub dev_a: String,
    /// The interface memplex reads for side B (a TAP, or `mb`).
    pub dev_b: String,
}

/// What one iperf3 run measured (from its JSON report, the sender's side).
#[derive(Debug, Clone, Copy, Default)]
pub struct Iperf {
    /// Bits per second.
    pub bits_per_second: f64,
    /// Bytes sent.
    pub bytes: u64,
    /// TCP retransmissions (0 for UDP).
    pub retransmits: u64,
    /// UDP datagrams lost (0 for TCP).
    pub lost: u64,
    /// UDP datagrams sent (0 for TCP).
    pub packets: u64,
    /// How long it ran, in seconds.
    pub seconds: f64,
}

impl ForwardNet {
    /// Builds the two namespaces and their TAP devices, with addresses and up.
    pub fn create() -> Result<ForwardNet, NetError> {
        let id = fresh_id()?;
        // TAP names unique to this net: memplex refuses a TAP whose name another process
        // reads, in whichever namespace, and tests build these nets side by side.
        let short = id.trim_start_matches("mpx-");
        let net = ForwardNet {
            ns_a: format!("{id}-fa"),
            ns_b: format!("{id}-fb"),
            ns_m: None,
            dev_a: format!("ta{short}"),
            dev_b: format!("tb{short}"),
        };
        for (ns, tap) in [(&net.ns_a, &net.dev_a), (&net.ns_b, &net.dev_b)] {
            run(&["ip", "netns", "add", ns])?;
            run(&[
                "ip",
                "-n",
                ns,
                "tuntap",
                "add",
                "dev",
                tap,
                "mode",
                "tap",
                "multi_queue",
                "vnet_hdr",
            ])?;
        }
        net.address(&net.dev_a, &net.dev_b)?;
        Ok(net)
    }

    /// The veth shape (see the type's docs); without `offloads` it needs `ethtool` to
    /// turn the hosts' offloads off.
    pub fn create_veth(offloads: bool) -> Result<ForwardNet, NetError> {
        let id = fresh_id()?;
        let net = ForwardNet {
            ns_a: format!("{id}-fa"),
            ns_b: format!("{id}-fb"),
            ns_m: Some(format!("{id}-fm")),
            dev_a: "ma".into(),
            dev_b: "mb".into(),
        };
        let m = net.ns_m.as_deref().unwrap_or_default();
        run(&["ip", "netns", "add", m])?;
        for (ns, host, peer) in [(&net.ns_a, "va", &net.dev_a), (&net.ns_b, "vb", &net.dev_b)] {
            run(&["ip", "netns", "add", ns])?;
            run(&[
                "ip", "-n", ns, "link", "add", host, "type", "veth", "peer", "name", peer, "netns",
                m,
            ])?;
            // `dev`: a bare name may be read as a keyword (`ma` for `master`).
            run(&["ip", "-n", m, "link", "set", "dev", peer, "up"])?;
            if !offloads {
                // Finished frames, as from a wire: checksums filled in, segments of one MSS.
                run(&[
                    "ip", "netns", "exec", ns, "ethtool", "-K", host, "tx", "off", "tso", "off",
                    "gso", "off",
                ])?;
            }
        }
        net.address("va", "vb")?;
        Ok(net)
    }

    /// The same two hosts joined directly by a veth pair, without memplex: the baseline
    /// a bump in the wire is compared with (offloads as the kernel sets them).
    pub fn create_direct() -> Result<ForwardNet, NetError> {
        let id = fresh_id()?;
        let net = ForwardNet {
            ns_a: format!("{id}-fa"),
            ns_b: format!("{id}-fb"),
            ns_m: None,
            dev_a: "va".into(),
            dev_b: "vb".into(),
        };
        run(&["ip", "netns", "add", &net.ns_a])?;
        run(&["ip", "netns", "add", &net.ns_b])?;
        run(&[
            "ip", "-n", &net.ns_a, "link", "add", "va", "type", "veth", "peer", "name", "vb",
            "netns", &net.ns_b,
        ])?;
        net.address("va", "vb")?;
        Ok(net)
    }

    /// Gives the hosts' interfaces `a` and `b` their addresses and brings them up.
    fn address(&self, a: &str, b: &str) -> Result<(), NetError> {
        for (ns, dev, v4, v6) in [
            (&self.ns_a, a, "10.80.0.1/24", "fd6e::1/64"),
            (&self.ns_b, b, "10.80.0.2/24", "fd6e::2/64"),
        ] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            run(&["ip", "-n", ns, "addr", "add", v4, "dev", dev])?;
            run(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            run(&["ip", "-n", ns, "link", "set", "dev", dev, "up"])?;
        }
        Ok(())
    }

    /// The namespace to open side A's device in.
    pub fn ns_dev_a(&self) -> &str {
        self.ns_m.as_deref().unwrap_or(&self.ns_a)
    }

    /// The namespace to open side B's device in.
    pub fn ns_dev_b(&self) -> &str {
        self.ns_m.as_deref().unwrap_or(&self.ns_b)
    }

    /// Pings `count` times from A to B (or B to A), IPv4 or IPv6; true when every reply came.
    pub fn ping(&self, from_a: bool, v6: bool, count: u32) -> Result<bool, NetError> {
        let (ns, to) = match (from_a, v6) {
            (true, false) => (&self.ns_a, fwd_addr::B4.to_string()),
            (false, false) => (&self.ns_b, fwd_addr::A4.to_string()),
            (true, true) => (&self.ns_a, fwd_addr::B6.to_string()),
            (false, true) => (&self.ns_b, fwd_addr::A6.to_string()),
        };
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-q", "-c"])
            .arg(count.to_string())
            .args(["-i", "0.2", "-W", "2", &to])
            .output()
            .map_err(|e| NetError::Command {
                command: format!("ping {to}"),
                output: format!("could not start ping: {e} (is iputils-ping installed?)"),
            })?;
        Ok(out.status.success())
    }

    /// Runs iperf3 for `seconds` between B (server) and A (client): TCP, or UDP at
    /// `udp_bps` (0: as fast as it can) in datagrams of 1200 bytes; `reverse` sends from
    /// B to A; `v6` over IPv6. Bounded: iperf3 is killed if it runs past twice the time
    /// plus 10 s.
    pub fn iperf3(
        &self,
        seconds: u32,
        udp_bps: Option<u64>,
        reverse: bool,
        v6: bool,
    ) -> Result<Iperf, NetError> {
        self.iperf3_sized(seconds, udp_bps.map(|b| (b, 1200)), reverse, v6)
    }

    /// [`iperf3`](Self::iperf3) with UDP as (bits per second, datagram bytes).
    pub fn iperf3_sized(
        &self,
        seconds: u32,
        udp: Option<(u64, u32)>,
        reverse: bool,
        v6: bool,
    ) -> Result<Iperf, NetError> {
        let port = "5301";
        let mut server = Command::new("ip")
            .args([
                "netns", "exec", &self.ns_b, "iperf3", "-s", "-1", "-p", port,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| NetError::Command {
                command: "iperf3 -s".into(),
                output: format!("could not start iperf3: {e} (is iperf3 installed?)"),
            })?;
        let to = if v6 {
            fwd_addr::B6.to_string()
        } else {
            fwd_addr::B4.to_string()
        };
        let mut args: Vec<String> = ["netns", "exec", &self.ns_a, "iperf3", "-J", "-c", &to]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["-p", port, "-t", &seconds.to_string()].map(String::from));
        if let Some((bps, len)) = udp {
            // 4 MiB socket buffers: with the default ones the receiving iperf3, sharing the
            // CPUs with memplex, overflows its socket (UdpRcvbufErrors) in bursts.
            args.extend(
                [
                    "-u",
                    "-b",
                    &bps.to_string(),
                    "-l",
                    &len.to_string(),
                    "-w",
                    "4M",
                ]
                .map(String::from),
            );
        }
        if reverse {
            args.push("-R".into());
        }
        // The server needs a moment to listen; the client retries a refused connect.
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_secs(u64::from(seconds) * 2 + 10);
        let result = loop {
            let mut client = Command::new("ip")
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| NetError::Command {
                    command: "iperf3 -c".into(),
                    output: e.to_string(),
                })?;
            // The report is read while iperf3 runs: a long run's JSON is more than a pipe
            // holds, and iperf3 would block writing it and never exit.
            let mut stdout = client.stdout.take();
            let reader = std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(out) = stdout.as_mut() {
                    let _ = std::io::Read::read_to_end(out, &mut buf);
                }
                buf
            });
            let status = loop {
                if let Ok(Some(status)) = client.try_wait() {
                    break status;
                }
                if std::time::Instant::now() >= deadline {
                    let _ = client.kill();
                    break client.wait().map_err(|e| NetError::Command {
                        command: "iperf3 -c".into(),
                        output: e.to_string(),
                    })?;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            };
            let out = std::process::Output {
                status,
                stdout: reader.join().unwrap_or_default(),
                stderr: Vec::new(),
            };
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let refused = json["error"]
                .as_str()
                .is_some_and(|e| e.contains("refused"));
            if refused && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            break match json["error"].as_str() {
                Some(e) => Err(NetError::Command {
                    command: format!("iperf3 {}", args[3..].join(" ")),
                    output: e.to_string(),
                }),
                None if !out.status.success() => Err(NetError::Command {
                    command: format!("iperf3 {}", args[3..].join(" ")),
                    output: format!("exited with {} and no report", out.status),
                }),
                None => {
                    let end = &json["end"];
                    let sum = if udp.is_some() {
                        &end["sum"]
                    } else {
                        &end["sum_sent"]
                    };
                    Ok(Iperf {
                        bits_per_second: sum["bits_per_second"].as_f64().unwrap_or(0.0),
                        bytes: sum["bytes"].as_u64().unwrap_or(0),
                        retransmits: sum["retransmits"].as_u64().unwrap_or(0),
                        lost: sum["lost_packets"].as_u64().unwrap_or(0),
                        packets: sum["packets"].as_u64().unwrap_or(0),
                        seconds: sum["seconds"].as_f64().unwrap_or(0.0),
                    })
                }
            };
        };
        let _ = server.kill();
        let _ = server.wait();
        result
    }
}

impl Drop for ForwardNet {
    fn drop(&mut self) {
        remove_namespaces(&[&self.ns_a, &self.ns_b]);
        if let Some(m) = &self.ns_m {
            remove_namespaces(&[m]);
        }
    }
}
