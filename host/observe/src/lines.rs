//! The queue between the data path and a log sink's thread (the access log's file writer and
//! its Kafka producer): bounded in lines and bytes, and cheap to push to. A push takes a short
//! lock and wakes the sink's thread only when the queue was empty (to start the linger clock) or
//! a batch just filled; the thread otherwise sleeps until the oldest line has waited `linger`.
//! So under load a sink costs the data path a lock per line, not a thread wake-up per line.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

/// Bytes of lines waiting at most, whatever the line bound allows: a line carries a path and a
/// host a client chose, so lines are not all small.
pub(crate) const MAX_QUEUE_BYTES: usize = 64 << 20;

/// A line and its record key (Kafka's; the file ignores it).
#[derive(Debug)]
pub(crate) struct Line {
    pub key: Option<Box<str>>,
    pub text: String,
}

/// A batch taken by the sink's thread.
pub(crate) struct Batch {
    pub lines: Vec<Line>,
    /// Flushes to answer once this batch is out (the queue was empty after it).
    pub flushes: Vec<mpsc::Sender<()>>,
    /// The queue is closed and empty: the thread ends after this batch.
    pub last: bool,
}

#[derive(Debug)]
pub(crate) struct LineQueue {
    state: Mutex<Waiting>,
    wake: Condvar,
    max_lines: usize,
    batch_bytes: usize,
    linger: Duration,
}

#[derive(Debug, Default)]
struct Waiting {
    lines: VecDeque<Line>,
    bytes: usize,
    /// When the oldest waiting line arrived.
    since: Option<Instant>,
    flushes: Vec<mpsc::Sender<()>>,
    closed: bool,
}

impl LineQueue {
    /// A queue of at most `max_lines` lines (and [`MAX_QUEUE_BYTES`]), taken in batches of up to
    /// `batch_bytes` once the oldest line has waited `linger`.
    pub fn new(max_lines: usize, batch_bytes: usize, linger: Duration) -> LineQueue {
        LineQueue {
            state: Mutex::new(Waiting::default()),
            wake: Condvar::new(),
            max_lines,
            batch_bytes,
            linger,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `line`, or gives it back when the queue is full. Returns the lines now waiting.
    pub fn push(&self, line: Line) -> Result<usize, Line> {
        let mut q = self.lock();
        if q.closed
            || q.lines.len() >= self.max_lines
            || q.bytes + line.text.len() > MAX_QUEUE_BYTES
        {
            return Err(line);
        }
        let before = q.bytes;
        q.bytes += line.text.len();
        q.since.get_or_insert_with(Instant::now);
        q.lines.push_back(line);
        let n = q.lines.len();
        let full = before < self.batch_bytes && q.bytes >= self.batch_bytes;
        drop(q);
        if full || n == 1 {
            self.wake.notify_one();
        }
        Ok(n)
    }

    /// Asks for everything queued so far to be taken; the receiver hears once it is out.
    pub fn flush(&self) -> mpsc::Receiver<()> {
        let (ack, done) = mpsc::channel();
        self.lock().flushes.push(ack);
        self.wake.notify_one();
        done
    }

    /// No more lines: the thread takes what is left and ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Waits for the next batch: a full one, the oldest line's linger ending, a flush, or the
    /// close. Returns it with the lines still waiting.
    pub fn next(&self) -> (Batch, usize) {
        let mut q = self.lock();
        loop {
            let due = q.since.map(|s| s + self.linger);
            let now = Instant::now();
            if q.closed
                || !q.flushes.is_empty()
                || q.bytes >= self.batch_bytes
                || due.is_some_and(|d| d <= now)
            {
                break;
            }
            q = match due {
                Some(d) => match self.wake.wait_timeout(q, d - now) {
                    Ok((q, _)) => q,
                    Err(e) => e.into_inner().0,
                },
                None => self.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
            };
        }
        let mut lines = Vec::new();
        let mut bytes = 0;
        while let Some(line) = q.lines.front() {
            if !lines.is_empty() && bytes + line.text.len() > self.batch_bytes {
                break;
            }
            bytes += line.text.len();
            lines.extend(q.lines.pop_front());
        }
        q.bytes -= bytes;
        // Lines left behind a full batch have waited their linger already: they keep their
        // start, so the next batch goes at once.
        let empty = q.lines.is_empty();
        if empty {
            q.since = None;
        }
        let flushes = if empty {
            std::mem::take(&mut q.flushes)
        } else {
            Vec::new()
        };
        let batch = Batch {
            lines,
            flushes,
            last: q.closed && empty,
        };
        (batch, q.lines.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Line {
        Line {
            key: None,
            text: s.to_owned(),
        }
    }

    #[test]
    fn bounded_batched_by_bytes_and_linger_and_flushed() {
        let q = LineQueue::new(3, 10, Duration::from_millis(30));
        assert!(q.push(line("aaaa")).is_ok());
        assert!(q.push(line("bbbb")).is_ok());
        assert!(q.push(line("cccc")).is_ok());
        assert!(q.push(line("dddd")).is_err(), "at most 3 lines");
        // 12 bytes waiting ≥ 10: a batch is due at once, and holds what fits in 10 bytes.
        let t = Instant::now();
        let (b, left) = q.next();
        assert!(t.elapsed() < Duration::from_millis(20));
        assert_eq!(b.lines.len(), 2);
        assert_eq!(left, 1);
        // The line left behind has waited: it goes at once too.
        let (b, left) = q.next();
        assert_eq!((b.lines.len(), left), (1, 0));
        // A lone line waits for its linger.
        q.push(line("e")).unwrap();
        let t = Instant::now();
        let (b, _) = q.next();
        assert!(
            t.elapsed() >= Duration::from_millis(25),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(b.lines[0].text, "e");
        // A flush does not wait, and is answered with the batch that empties the queue.
        q.push(line("f")).unwrap();
        let done = q.flush();
        let (b, _) = q.next();
        assert_eq!(b.lines.len(), 1);
        assert_eq!(b.flushes.len(), 1);
        assert!(
            done.try_recv().is_err(),
            "answered by the sink once the batch is out"
        );
        // Closed: the last batch says so, and pushes are refused.
        q.push(line("g")).unwrap();
        q.close();
        assert!(q.push(line("h")).is_err());
        let (b, _) = q.next();
        assert!(b.last && b.lines.len() == 1);
    }

    #[test]
    fn bytes_are_bounded_whatever_the_line_count() {
        let q = LineQueue::new(1_000_000, 1 << 20, Duration::from_secs(1));
        let big = "x".repeat(1 << 20);
        let mut taken = 0;
        while q.push(line(&big)).is_ok() {
            taken += 1;
        }
        assert_eq!(taken, MAX_QUEUE_BYTES >> 20);
    }
}
