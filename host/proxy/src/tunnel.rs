//! Upgraded connections (WebSocket): after the `101`, bytes are relayed both ways on the
//! downstream connection's own task, so a tunnel keeps its connection slot, counts for drain,
//! and is closed when idle or when drain's deadline passes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use weir_observe::{TimeoutKind, TimeoutStats};

/// Both halves of an accepted upgrade, resolved once hyper hands the connections over.
pub(crate) struct Tunnel {
    pub down: OnUpgrade,
    pub up: OnUpgrade,
}

/// Relays until either side closes, nothing moves for `idle`, or `drain` has passed since
/// shutdown began.
pub(crate) async fn run(
    t: Tunnel,
    idle: Duration,
    drain: Duration,
    timeouts: &'static TimeoutStats,
    shutdown: watch::Receiver<bool>,
) {
    let (down, up) = match tokio::try_join!(t.down, t.up) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    let activity = Arc::new(Activity::new());
    let mut down = Active {
        io: TokioIo::new(down),
        activity: activity.clone(),
    };
    let mut up = Active {
        io: TokioIo::new(up),
        activity: activity.clone(),
    };
    let relay = tokio::io::copy_bidirectional(&mut down, &mut up);
    match supervise(relay, &activity, idle, drain, shutdown).await {
        Ended::Done(Err(e)) => tracing::debug!("tunnel ended: {e}"),
        Ended::Done(Ok(_)) => {}
        Ended::Idle(quiet) => {
            timeouts.fired(TimeoutKind::TunnelIdle);
            tracing::debug!("tunnel idle for {quiet:?}: closed");
        }
        Ended::Drain => tracing::debug!("drain deadline: tunnel closed"),
    }
}

/// When bytes last moved on a relayed connection.
pub(crate) struct Activity {
    born: Instant,
    /// Milliseconds since `born`.
    last: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            born: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Bytes moved now.
    pub fn touch(&self) {
        self.last
            .store(self.born.elapsed().as_millis() as u64, Relaxed);
    }

    fn quiet(&self) -> Duration {
        self.born
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Relaxed)))
    }
}

/// How a supervised relay ended.
pub(crate) enum Ended<T> {
    /// The relay finished by itself.
    Done(T),
    /// Nothing moved for this long (at least the idle timeout).
    Idle(Duration),
    /// Drain's deadline passed.
    Drain,
}

/// Runs `relay` (a byte relay that `touch`es `activity`) until it finishes, nothing moves for
/// `idle`, or `drain` has passed since shutdown began; the relay is dropped at either deadline.
pub(crate) async fn supervise<F: std::future::Future>(
    relay: F,
    activity: &Activity,
    idle: Duration,
    drain: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Ended<F::Output> {
    tokio::pin!(relay);
    let mut deadline: Option<tokio::time::Instant> = None;
    if *shutdown.borrow() {
        deadline = Some(tokio::time::Instant::now() + drain);
    }
    loop {
        let quiet = activity.quiet();
        if quiet >= idle {
            return Ended::Idle(quiet);
        }
        let mut wake = tokio::time::Instant::now() + (idle - quiet);
        if let Some(d) = deadline {
            wake = wake.min(d);
        }
        tokio::select! {
            r = &mut relay => return Ended::Done(r),
            _ = shutdown.changed(), if deadline.is_none() => {
                deadline = Some(tokio::time::Instant::now() + drain);
            }
            () = tokio::time::sleep_until(wake) => {
                if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                    return Ended::Drain;
                }
            }
        }
    }
}

/// One side of a tunnel, noting when bytes arrive from it.
struct Active<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Active<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Active<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
