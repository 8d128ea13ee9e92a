//! The server thread: listens on each consumer's socket, admits sessions, makes their
//! channels and hands them to the workers, and notices sessions that end.
//!
//! A Hello is admitted when it speaks this protocol's version, names the consumer whose
//! socket it came to (or no name), comes from an allowed peer (SO_PEERCRED: memplex's own
//! user, or one in `allow_uids` / `allow_gids`), and the consumer has a session slot
//! left. The socket file is made with mode 0600 (0660 / 0666 when the allow-lists name
//! other groups / users) before `listen`, so nobody connects before it is restricted.

use super::{Inbox, NewChannel, Session};
use crate::config::{ConsumerConfig, WakeMode};
use crate::stats::Disconnect;
use memplex_proto::msg::{self, Bye, ByeReason, Kind};
use memplex_proto::ring::ChannelMap;
use rustix::event::{PollFd, PollFlags};
use rustix::net::{AddressFamily, RecvFlags, SocketAddrUnix, SocketFlags, SocketType};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A consumer socket that could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("consumer `{consumer}`: socket {}: {problem}", path.display())]
pub struct ServerError {
    /// The consumer's name.
    pub consumer: String,
    /// Its socket path.
    pub path: PathBuf,
    /// What went wrong.
    pub problem: String,
}

/// The running server; stop it with [`stop`](Server::stop) (dropping it stops it too).
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    paths: Vec<PathBuf>,
}

static SESSIONS: AtomicU64 = AtomicU64::new(1);

struct Listener {
    consumer: usize,
    name: String,
    cfg: ConsumerConfig,
    sock: OwnedFd,
}

struct Live {
    consumer: usize,
    session: Arc<Session>,
}

impl Server {
    /// Binds every consumer's socket and starts the thread. `inboxes` has one entry per
    /// queue.
    pub(crate) fn start(
        consumers: &[(String, ConsumerConfig)],
        inboxes: Vec<Arc<Inbox>>,
    ) -> Result<Server, ServerError> {
        let mut listeners = Vec::new();
        let mut paths = Vec::new();
        for (i, (name, cfg)) in consumers.iter().enumerate() {
            let sock = listen(cfg).map_err(|problem| ServerError {
                consumer: name.clone(),
                path: cfg.socket.clone(),
                problem,
            })?;
            paths.push(cfg.socket.clone());
            listeners.push(Listener {
                consumer: i,
                name: name.clone(),
                cfg: cfg.clone(),
                sock,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("memplex-deliver".into())
            .spawn(move || serve(&listeners, &inboxes, &flag))
            .map_err(|e| ServerError {
                consumer: consumers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                path: paths.first().cloned().unwrap_or_default(),
                problem: format!("cannot start the delivery thread: {e}"),
            })?;
        Ok(Server {
            stop,
            thread: Some(thread),
            paths,
        })
    }

    /// Says goodbye to every session, stops the thread and removes the socket files.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Makes, restricts and listens on a consumer's socket.
fn listen(cfg: &ConsumerConfig) -> Result<OwnedFd, String> {
    let path = &cfg.socket;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err("exists and is not a socket; remove it or name another path".into());
        }
        // A socket file: in use if something answers, else left by a run that died.
        let probe = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| e.to_string())?;
        let addr = SocketAddrUnix::new(path.as_path()).map_err(|e| e.to_string())?;
        if rustix::net::connect(&probe, &addr).is_ok() {
            return Err("is in use by another process (another memplex run?)".into());
        }
        std::fs::remove_file(path).map_err(|e| format!("removing the stale socket: {e}"))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
    }
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| e.to_string())?;
    let addr = SocketAddrUnix::new(path.as_path()).map_err(|e| e.to_string())?;
    rustix::net::bind(&sock, &addr).map_err(|e| format!("bind: {e}"))?;
    let mode = if !cfg.allow_uids.is_empty() {
        0o666
    } else if !cfg.allow_gids.is_empty() {
        0o660
    } else {
        0o600
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {mode:o}: {e}"))?;
    rustix::net::listen(&sock, 16).map_err(|e| format!("listen: {e}"))?;
    Ok(sock)
}

/// How long a connection may take to send its Hello.
const HELLO_WITHIN: Duration = Duration::from_secs(2);

/// Connections accepted that have not sent their Hello yet, at most.
const PENDING_MAX: usize = 64;

/// A connection waiting for its Hello: which listener, the socket, until when.
struct Pending {
    listener: usize,
    sock: OwnedFd,
    deadline: std::time::Instant,
}

fn serve(listeners: &[Listener], inboxes: &[Arc<Inbox>], stop: &AtomicBool) {
    let mut live: Vec<Live> = Vec::new();
    // Connections are admitted when their Hello arrives, never waited for in line: one
    // that connects and says nothing delays nobody else.
    let mut pending: Vec<Pending> = Vec::new();
    let mut buf = [0u8; msg::MAX_MSG];
    while !stop.load(Ordering::Acquire) {
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|l| PollFd::new(&l.sock, PollFlags::IN))
            .chain(
                live.iter()
                    .map(|s| PollFd::new(&s.session.sock, PollFlags::IN)),
            )
            .chain(pending.iter().map(|p| PollFd::new(&p.sock, PollFlags::IN)))
            .collect();
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        if rustix::event::poll(&mut fds, Some(&timeout)).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        // Hellos that arrived (or connections that gave up), then new connections.
        let now = std::time::Instant::now();
        let live_before = live.len();
        let mut still = Vec::with_capacity(pending.len());
        for (p, r) in pending
            .drain(..)
            .zip(&ready[listeners.len() + live_before..])
        {
            let l = &listeners[p.listener];
            if *r {
                let sessions = live.iter().filter(|s| s.consumer == l.consumer).count();
                match admit(l, p.sock, sessions, inboxes, &mut buf) {
                    Ok(session) => live.push(Live {
                        consumer: l.consumer,
                        session,
                    }),
                    Err(why) => tracing::warn!(consumer = %l.name, "refused a consumer: {why}"),
                }
            } else if now >= p.deadline {
                let why = refuse(&p.sock, format!("no Hello within {HELLO_WITHIN:?}"));
                tracing::warn!(consumer = %l.name, "refused a consumer: {why}");
            } else {
                still.push(p);
            }
        }
        pending = still;
        for (i, l) in listeners.iter().enumerate().filter(|(i, _)| ready[*i]) {
            while let Ok(conn) = rustix::net::accept_with(&l.sock, SocketFlags::CLOEXEC) {
                if pending.len() >= PENDING_MAX {
                    let why = refuse(&conn, "too many connections waiting to say Hello".into());
                    tracing::warn!(consumer = %l.name, "refused a consumer: {why}");
                    continue;
                }
                pending.push(Pending {
                    listener: i,
                    sock: conn,
                    deadline: now + HELLO_WITHIN,
                });
            }
        }
        for (s, _) in live
            .iter()
            .take(live_before)
            .zip(&ready[listeners.len()..listeners.len() + live_before])
            .filter(|(_, r)| **r)
        {
            match msg::recv(&s.session.sock, &mut buf, RecvFlags::DONTWAIT) {
                Ok(None) => s.session.end(Disconnect::Left),
                Ok(Some((n, _fds))) => match msg::decode(&buf[..n]) {
                    Ok((Kind::Bye, _)) => s.session.end(Disconnect::Left),
                    _ => s.session.end(Disconnect::BadMessage),
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => s.session.end(Disconnect::Left),
            }
        }
        live.retain(|s| match s.session.ended() {
            None => true,
            Some(why) => {
                tracing::info!(session = s.session.id, reason = ?why, "consumer session ended");
                bye(&s.session.sock, why);
                let _ = rustix::net::shutdown(&s.session.sock, rustix::net::Shutdown::Both);
                false
            }
        });
    }
    for s in live {
        s.session.end(Disconnect::Shutdown);
        bye(&s.session.sock, Disconnect::Shutdown);
        let _ = rustix::net::shutdown(&s.session.sock, rustix::net::Shutdown::Both);
    }
}

fn bye(sock: impl AsFd, why: Disconnect) {
    let (reason, text) = match why {
        Disconnect::Left => (ByeReason::Done, "goodbye"),
        Disconnect::BadToken => (
            ByeReason::BadToken,
            "a refill token was stale, foreign or forged",
        ),
        Disconnect::BadIndex => (
            ByeReason::BadIndex,
            "a ring index moved outside what the ring allows",
        ),
        Disconnect::BadMessage => (ByeReason::BadMessage, "a message the host could not use"),
        Disconnect::Shutdown => (ByeReason::Shutdown, "memplex is stopping"),
        Disconnect::BadEntry => (
            ByeReason::BadEntry,
            "a transmit entry named no parts, too many, or bytes outside their buffer",
        ),
    };
    let _ = msg::send(
        sock,
        Kind::Bye,
        &Bye {
            reason: reason as u32,
            text: msg::fixed(text),
        },
        &[],
    );
}

fn refuse(sock: &OwnedFd, why: String) -> String {
    let _ = msg::send(
        sock,
        Kind::Bye,
        &Bye {
            reason: ByeReason::Refused as u32,
            text: msg::fixed(&why),
        },
        &[],
    );
    why
}

/// Reads the Hello and, if it is admitted, sends the session's terms and channels.
fn admit(
    l: &Listener,
    sock: OwnedFd,
    sessions: usize,
    inboxes: &[Arc<Inbox>],
    buf: &mut [u8; msg::MAX_MSG],
) -> Result<Arc<Session>, String> {
    let limit = Some(Duration::from_secs(2));
    let _ =
        rustix::net::sockopt::set_socket_timeout(&sock, rustix::net::sockopt::Timeout::Recv, limit);
    let _ = rustix::net::sockopt::set_socket_timeout(
        &sock,
        rustix::net::sockopt::Timeout::Send,
        Some(Duration::from_millis(500)),
    );
    let hello: msg::Hello = match msg::recv(&sock, buf, RecvFlags::empty()) {
        Ok(Some((n, _))) => match msg::decode(&buf[..n]) {
            Ok((Kind::Hello, body)) => {
                // The version first: an older consumer's shorter Hello is refused for
                // its version, not its length.
                let version = body
                    .get(..4)
                    .map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]));
                if let Some(v) = version.filter(|&v| v != memplex_proto::VERSION) {
                    return Err(refuse(
                        &sock,
                        format!(
                            "protocol version {v} is not {} (this memplex speaks version {} only)",
                            memplex_proto::VERSION,
                            memplex_proto::VERSION
                        ),
                    ));
                }
                msg::body(body).map_err(|e| refuse(&sock, e))?
            }
            Ok((k, _)) => return Err(refuse(&sock, format!("expected Hello, got {k:?}"))),
            Err(e) => return Err(refuse(&sock, e)),
        },
        Ok(None) => return Err("closed before Hello".into()),
        Err(e) => return Err(format!("no Hello: {e}")),
    };
    // Credentials after the Hello is read, so a refusal reaches the peer as a Bye
    // (closing with its Hello unread would reset the connection instead).
    let cred =
        rustix::net::sockopt::socket_peercred(&sock).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let me = rustix::process::geteuid();
    let uid = cred.uid.as_raw();
    let gid = cred.gid.as_raw();
    if uid != me.as_raw() && !l.cfg.allow_uids.contains(&uid) && !l.cfg.allow_gids.contains(&gid) {
        return Err(refuse(
            &sock,
            format!(
                "peer uid {uid} gid {gid} (pid {}) is not allowed; see allow_uids / allow_gids",
                cred.pid.as_raw_nonzero()
            ),
        ));
    }
    let name = msg::text(&hello.name);
    if !name.is_empty() && name != l.name {
        return Err(refuse(
            &sock,
            format!("this socket serves consumer `{}`, not `{name}`", l.name),
        ));
    }
    if sessions >= l.cfg.max_sessions as usize {
        return Err(refuse(
            &sock,
            format!(
                "consumer `{}` has its {} sessions (max_sessions)",
                l.name, l.cfg.max_sessions
            ),
        ));
    }
    let id = SESSIONS.fetch_add(1, Ordering::Relaxed);
    let eventfds = l.cfg.wake == WakeMode::Eventfd;
    let features = hello.features & msg::FEATURE_META;
    let meta = features & msg::FEATURE_META != 0;
    let send = |e: std::io::Error| format!("sending the session: {e}");
    msg::send(
        &sock,
        Kind::Welcome,
        &msg::Welcome {
            version: memplex_proto::VERSION,
            queues: inboxes.len() as u32,
            session: id,
            quota: l.cfg.quota(),
            checksums: u32::from(l.cfg.checksum && meta),
            features,
            reserved: 0,
        },
        &[],
    )
    .map_err(send)?;
    let mut channels = Vec::new();
    for q in 0..inboxes.len() {
        let (map, memfd) = ChannelMap::create(
            q as u32,
            l.cfg.ring_entries,
            l.cfg.refill(),
            l.cfg.transmit_ring(),
            meta,
        )
        .map_err(|e| format!("making the channel of queue {q}: {e}"))?;
        let len = map.len();
        let efd = if eventfds {
            Some(
                rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
                )
                .map_err(|e| format!("eventfd: {e}"))?,
            )
        } else {
            None
        };
        let mut fds = vec![memfd.as_fd()];
        if let Some(e) = &efd {
            fds.push(e.as_fd());
        }
        msg::send(
            &sock,
            Kind::Channel,
            &msg::Channel {
                queue: q as u32,
                eventfd: u32::from(eventfds),
                len: len as u64,
            },
            &fds,
        )
        .map_err(send)?;
        channels.push((Arc::new(map), efd));
    }
    msg::send(
        &sock,
        Kind::Ready,
        &msg::Header {
            magic: msg::MAGIC,
            kind: 0,
        },
        &[],
    )
    .map_err(send)?;
    let session = Arc::new(Session {
        id,
        sock,
        end: AtomicU8::new(0),
    });
    for ((map, efd), inbox) in channels.into_iter().zip(inboxes) {
        inbox.push(NewChannel {
            consumer: l.consumer,
            session: Arc::clone(&session),
            map,
            eventfd: efd,
        });
    }
    tracing::info!(consumer = %l.name, session = id, uid, pid = cred.pid.as_raw_nonzero(), "consumer connected");
    Ok(session)
}
