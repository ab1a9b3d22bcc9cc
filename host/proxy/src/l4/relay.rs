//! Bytes both ways between a client and an upstream until both sides have finished. On Linux
//! each direction moves through a pipe with `splice(2)` — socket to pipe, pipe to socket — so
//! the bytes never cross into user space; elsewhere (or `splice: false`) through a buffer.
//!
//! A side that finishes (end of file) has its peer's write side shut (half-close), and the
//! other direction goes on; an error on either side ends both.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::io::Interest;
use tokio::net::TcpStream;
use weir_observe::ListenerStats;

use crate::tunnel::Activity;

/// Bytes relayed so far by one connection (readable after the relay is dropped).
#[derive(Default)]
pub(crate) struct Counts {
    /// Client to upstream.
    pub received: AtomicU64,
    /// Upstream to client.
    pub sent: AtomicU64,
}

/// How a relay ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides finished.
    Closed,
    /// Reading from or writing to the client failed.
    ClientReset,
    /// Reading from or writing to the upstream failed.
    UpstreamReset,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ClientReset => "client_reset",
            End::UpstreamReset => "upstream_reset",
        }
    }
}

/// Which side failed.
struct Failed(End);

/// Relays until both directions finish or one fails.
pub(crate) async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    splice: bool,
    counts: &Counts,
    stats: &ListenerStats,
    activity: &Activity,
) -> End {
    let up = Direction {
        from: client,
        to: upstream,
        from_fails: End::ClientReset,
        to_fails: End::UpstreamReset,
        count: &counts.received,
        total: &stats.bytes_received,
        activity,
    };
    let down = Direction {
        from: upstream,
        to: client,
        from_fails: End::UpstreamReset,
        to_fails: End::ClientReset,
        count: &counts.sent,
        total: &stats.bytes_sent,
        activity,
    };
    match tokio::try_join!(up.run(splice), down.run(splice)) {
        Ok(_) => End::Closed,
        Err(Failed(end)) => end,
    }
}

/// One direction of a relay.
struct Direction<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    from_fails: End,
    to_fails: End,
    count: &'a AtomicU64,
    total: &'a AtomicU64,
    activity: &'a Activity,
}

/// The most moved per splice (a pipe holds 64 KiB by default).
const CHUNK: usize = 64 * 1024;

/// The buffer a spliced direction starts with: a read that fills it turns to splice.
const SMALL: usize = 4096;

impl Direction<'_> {
    /// Copies through a small buffer first: short exchanges (a request and its answer) never
    /// pay for a pipe. A read that fills the buffer means bulk: on Linux with `splice`, the
    /// rest moves through a pipe.
    async fn run(self, splice: bool) -> Result<(), Failed> {
        // The small buffer lives in the connection's task (allocated with it); a copying
        // relay's larger one is allocated when the relay starts.
        let mut small = [0u8; SMALL];
        let mut large = Vec::new();
        let buf: &mut [u8] = if splice {
            &mut small
        } else {
            large.resize(16 * 1024, 0);
            &mut large
        };
        loop {
            let n = self.copy_once(buf).await?;
            if n == 0 {
                return self.finish();
            }
            #[cfg(target_os = "linux")]
            if splice && n == buf.len() {
                use rustix::pipe::{PipeFlags, pipe_with};
                match pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) {
                    Ok(pipe) => return self.spliced(pipe).await,
                    // Out of descriptors for a pipe: copy instead.
                    Err(e) => tracing::debug!("no pipe for splice ({e}): copying"),
                }
            }
        }
    }

    /// One read and its writes; returns the bytes moved (0 at end of file).
    async fn copy_once(&self, buf: &mut [u8]) -> Result<usize, Failed> {
        let n = loop {
            self.from
                .readable()
                .await
                .map_err(|_| Failed(self.from_fails))?;
            match self.from.try_read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(Failed(self.from_fails)),
            }
        };
        let mut sent = 0;
        while sent < n {
            self.to
                .writable()
                .await
                .map_err(|_| Failed(self.to_fails))?;
            match self.to.try_write(&buf[sent..n]) {
                Ok(m) => sent += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(Failed(self.to_fails)),
            }
        }
        if n > 0 {
            self.moved(n);
        }
        Ok(n)
    }

    fn moved(&self, n: usize) {
        self.count.fetch_add(n as u64, Relaxed);
        self.total.fetch_add(n as u64, Relaxed);
        self.activity.touch();
    }

    /// The reader finished: the writer's side is shut, so its peer sees the end too.
    fn finish(&self) -> Result<(), Failed> {
        match rustix::net::shutdown(self.to, rustix::net::Shutdown::Write) {
            // The peer may be gone already; the other direction will find out.
            Ok(()) | Err(rustix::io::Errno::NOTCONN) => Ok(()),
            Err(_) => Err(Failed(self.to_fails)),
        }
    }

    #[cfg(target_os = "linux")]
    async fn spliced(
        self,
        (pipe_r, pipe_w): (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    ) -> Result<(), Failed> {
        use rustix::pipe::{SpliceFlags, splice};
        let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
        loop {
            // The pipe is empty here, so `EAGAIN` can only mean the socket has nothing.
            let n = loop {
                self.from
                    .readable()
                    .await
                    .map_err(|_| Failed(self.from_fails))?;
                match self.from.try_io(Interest::READABLE, || {
                    splice(self.from, None, &pipe_w, None, CHUNK, flags).map_err(io::Error::from)
                }) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Err(Failed(self.from_fails)),
                }
            };
            if n == 0 {
                return self.finish();
            }
            // And here it holds `left` bytes, so `EAGAIN` means the socket is full.
            let mut left = n;
            while left > 0 {
                self.to
                    .writable()
                    .await
                    .map_err(|_| Failed(self.to_fails))?;
                match self.to.try_io(Interest::WRITABLE, || {
                    splice(&pipe_r, None, self.to, None, left, flags).map_err(io::Error::from)
                }) {
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Err(Failed(self.to_fails)),
                }
            }
            self.moved(n);
        }
    }
}
