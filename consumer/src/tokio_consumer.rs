//! The consumer for tokio: waits on the eventfds and the socket with `AsyncFd`, reads
//! frames the same way as the blocking one.
#![allow(
    unsafe_code,
    reason = "registering owned descriptors with tokio's reactor"
)]

use crate::{Consumer, Error, Frame, Options, Wake};
use std::os::fd::OwnedFd;
use std::path::Path;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A duplicate of one of the consumer's descriptors (same open file, same readiness),
/// owned by tokio's reactor.
type Watched = OwnedFd;

/// A session for tokio programs: [`next`](AsyncConsumer::next) awaits a frame.
/// Eventfd wake-ups only (busy-polling has no place on an async runtime).
pub struct AsyncConsumer {
    inner: Consumer,
    watch: Vec<AsyncFd<Watched>>,
}

impl std::fmt::Debug for AsyncConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Async{:?}", self.inner)
    }
}

impl AsyncConsumer {
    /// Connects (the set-up is a few small messages, done in place) and registers the
    /// eventfds and the socket with the runtime.
    pub fn connect(path: impl AsRef<Path>, opts: &Options) -> Result<AsyncConsumer, Error> {
        let mut opts = opts.clone();
        opts.wake = Wake::EventFd;
        let inner = Consumer::connect(path, &opts)?;
        if inner.wake() != Wake::EventFd {
            return Err(Error::Protocol(
                "memplex offers no eventfds (wake = \"busy_poll\"); use the blocking Consumer"
                    .into(),
            ));
        }
        let fds = inner
            .eventfds()
            .chain(std::iter::once(inner.socket()))
            .map(|f| f.try_clone_to_owned())
            .collect::<Result<Vec<Watched>, _>>()?;
        let mut watch = Vec::new();
        for fd in fds {
            // SAFETY: `fd` is an owned duplicate moved into the `AsyncFd`, which keeps it
            // open, unchanged, until it is dropped.
            let w = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| Error::Io(e.into()))?;
            watch.push(w);
        }
        Ok(AsyncConsumer { inner, watch })
    }

    /// The blocking consumer underneath (for its accessors).
    pub fn consumer(&self) -> &Consumer {
        &self.inner
    }

    /// The next frame; an error when the session ends.
    pub async fn next(&self) -> Result<Frame<'_>, Error> {
        self.wait_for(|| self.inner.try_next()).await
    }

    /// Hands `f` the frames ready, up to `max`, once at least one is (see
    /// [`Consumer::next_burst`]); returns how many (0 at once for a `max` of 0). An error
    /// when the session ends.
    pub async fn next_burst<'c>(
        &'c self,
        max: usize,
        mut f: impl FnMut(Frame<'c>),
    ) -> Result<usize, Error> {
        if max == 0 {
            return self.inner.try_next_burst(0, f);
        }
        self.wait_for(|| {
            let n = self.inner.try_next_burst(max, &mut f)?;
            Ok((n > 0).then_some(n))
        })
        .await
    }

    /// Waits until `attempt` finds something, on the eventfds and the socket.
    async fn wait_for<T>(
        &self,
        mut attempt: impl FnMut() -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        loop {
            if let Some(got) = attempt()? {
                return Ok(got);
            }
            self.inner.flush();
            for ch in &self.inner.channels {
                ch.completion.borrow().want_wakeup();
            }
            if let Some(got) = attempt()? {
                return Ok(got);
            }
            // Any eventfd or the socket: whichever becomes readable first.
            let waits = self.watch.iter().map(|w| Box::pin(w.readable()));
            let (ready, _, _) = futures_select(waits).await;
            let mut guard = ready?;
            guard.clear_ready();
            for e in self
                .inner
                .channels
                .iter()
                .filter_map(|c| c.eventfd.as_ref())
            {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(e, &mut b);
            }
            self.inner.read_socket(false)?;
            for ch in &self.inner.channels {
                ch.completion.borrow().no_wakeup();
            }
        }
    }

    /// Ends the session politely.
    pub fn close(self) {
        self.inner.close();
    }
}

/// The first of several futures to finish (a small `select_all`, to need no futures
/// crate): its output, its index, and the rest.
async fn futures_select<F: std::future::Future + Unpin>(
    futures: impl Iterator<Item = F>,
) -> (F::Output, usize, Vec<F>) {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(move |cx| {
        for (i, f) in futures.iter_mut().enumerate() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready((out, i, Vec::new()));
            }
        }
        std::task::Poll::Pending
    })
    .await
}
