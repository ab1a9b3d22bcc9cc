use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use crate::lines::{Line, LineQueue};

/// One access log line (serialized as a single JSON object).
#[derive(Debug, Clone, Serialize)]
pub struct AccessRecord {
    /// RFC 3339 time the request arrived, UTC, millisecond precision.
    pub time: String,
    /// Client address (`ip:port`).
    pub client: String,
    /// Listener name.
    pub listener: String,
    /// Request method.
    pub method: String,
    /// Host (authority) the client asked for.
    pub host: String,
    /// Path and query as received.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: &'static str,
    /// Response status sent.
    pub status: u16,
    /// Response body bytes sent downstream.
    pub bytes: u64,
    /// Milliseconds from request arrival to the end of the response body.
    pub duration_ms: f64,
    /// Route name, empty when none matched.
    pub route: String,
    /// Cluster name, empty when none.
    pub cluster: String,
    /// Upstream endpoint address (of the last try), empty when the request was not forwarded.
    pub upstream: String,
    /// Upstream tries: 0 when not forwarded, more than 1 when retried.
    pub attempts: u32,
    /// The request id (`x-request-id`).
    pub request_id: String,
    /// Why the proxy answered itself, when it did (left out otherwise): `route_disabled`,
    /// `no_route`, `bad_request`, `upstream_timeout`, `upstream`, `filter` (a filter's own
    /// answer), `filter_failed`, ... (see `ErrorKind::code`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: &'static str,
    /// The W3C trace id (32 hex digits), with `tracing:` on.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// This proxy's span id for the request (16 hex digits; the upstream's parent), with
    /// `tracing:` on.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub span_id: String,
}

/// One line per connection of a `tcp` or `tls_passthrough` listener, written when it closes.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRecord {
    /// RFC 3339 time the connection was accepted, UTC, millisecond precision.
    pub time: String,
    /// `tcp` or `tls_passthrough`: tells these lines from requests'.
    pub kind: &'static str,
    /// Client address (`ip:port`; from the PROXY header when a trusted peer sent one).
    pub client: String,
    /// Listener name.
    pub listener: String,
    /// The ClientHello's server name (`tls_passthrough`), empty when none.
    pub sni: String,
    /// Cluster name, empty when none was picked.
    pub cluster: String,
    /// The endpoint connected to, empty when none was.
    pub upstream: String,
    /// Endpoints tried.
    pub attempts: u32,
    /// Bytes relayed from the client to the upstream.
    pub bytes_received: u64,
    /// Bytes relayed from the upstream to the client.
    pub bytes_sent: u64,
    /// Milliseconds from accept to close.
    pub duration_ms: f64,
    /// Why the connection closed: `closed` (both sides finished), `client_reset`,
    /// `upstream_reset`, `idle_timeout`, `drain`, `connect_failed`, or why it was refused.
    pub close: &'static str,
}

/// Lines queued for the writer thread at most; past that, lines are dropped and counted
/// (`weir_access_log_dropped_total`) rather than grow memory behind a disk that cannot keep up.
pub const ACCESS_LOG_QUEUE: usize = 16 * 1024;

/// The access log: each record is formatted once, by the caller's thread, and handed to its
/// sinks — a stream or file written by a thread of its own, a Kafka topic, or both — so a slow
/// disk or broker never stalls the data path.
#[derive(Debug, Clone)]
pub struct AccessLog {
    file: Option<Arc<FileSink>>,
    kafka: Option<Arc<crate::KafkaSink>>,
    dropped: Arc<AtomicU64>,
}

/// What picks a record's Kafka key.
pub trait LogKeys {
    /// The route's name (for an L4 connection, its listener's).
    fn route(&self) -> &str;
    /// The request id; empty when there is none.
    fn request_id(&self) -> &str;
}

impl LogKeys for AccessRecord {
    fn route(&self) -> &str {
        &self.route
    }
    fn request_id(&self) -> &str {
        &self.request_id
    }
}

impl LogKeys for ConnectionRecord {
    fn route(&self) -> &str {
        &self.listener
    }
    fn request_id(&self) -> &str {
        ""
    }
}

impl AccessLog {
    /// Opens `stdout`, `stderr` or a file (appended to); lines that find the queue full are
    /// counted in `dropped`.
    pub fn open(path: &str, dropped: Arc<AtomicU64>) -> io::Result<AccessLog> {
        AccessLog::new(Some(path), None, dropped)
    }

    /// A log writing to `path` (`stdout`, `stderr` or a file) and/or producing to `kafka`.
    pub fn new(
        path: Option<&str>,
        kafka: Option<Arc<crate::KafkaSink>>,
        dropped: Arc<AtomicU64>,
    ) -> io::Result<AccessLog> {
        let file = match path {
            None => None,
            Some(path) => {
                let out: Box<dyn Write + Send> = match path {
                    "stdout" => Box::new(io::stdout()),
                    "stderr" => Box::new(io::stderr()),
                    file => Box::new(OpenOptions::new().create(true).append(true).open(file)?),
                };
                Some(Arc::new(FileSink::start(out, ACCESS_LOG_QUEUE)?))
            }
        };
        Ok(AccessLog {
            file,
            kafka,
            dropped,
        })
    }

    /// A sink writing to `out`, queueing at most `queue` lines.
    pub fn to_writer(
        out: Box<dyn Write + Send>,
        queue: usize,
        dropped: Arc<AtomicU64>,
    ) -> io::Result<AccessLog> {
        Ok(AccessLog {
            file: Some(Arc::new(FileSink::start(out, queue)?)),
            kafka: None,
            dropped,
        })
    }

    /// Its Kafka sink, if it has one (kept across configs that do not change it).
    pub fn kafka(&self) -> Option<&Arc<crate::KafkaSink>> {
        self.kafka.as_ref()
    }

    /// Queues one record, or counts it dropped when a queue is full.
    pub fn write<R: Serialize + LogKeys>(&self, record: &R) {
        let Ok(line) = serde_json::to_string(record) else {
            return;
        };
        let file_line = |mut line: String| {
            line.push('\n');
            line
        };
        match (&self.file, &self.kafka) {
            (Some(file), Some(kafka)) => {
                kafka.push(line.clone(), record.route(), record.request_id());
                self.to_file(file, file_line(line));
            }
            (Some(file), None) => self.to_file(file, file_line(line)),
            (None, Some(kafka)) => kafka.push(line, record.route(), record.request_id()),
            (None, None) => {}
        }
    }

    fn to_file(&self, file: &FileSink, text: String) {
        if file.queue.push(Line { key: None, text }).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Writes and sends every line queued so far, waiting at most `limit` for each sink
    /// (shutdown: the last lines are not lost with the process). Blocking: call it off the
    /// async runtime.
    pub fn flush(&self, limit: Duration) -> bool {
        let file = self
            .file
            .as_ref()
            .is_none_or(|f| f.queue.flush().recv_timeout(limit).is_ok());
        let kafka = self.kafka.as_ref().is_none_or(|k| k.flush(limit));
        file && kafka
    }
}

/// Lines wait at most this long for the file writer (nginx's `access_log ... flush=`): under
/// load the writer wakes once per interval, not once per line.
const FILE_LINGER: Duration = Duration::from_millis(10);

/// A stream or file, written by a thread of its own from a [`LineQueue`].
#[derive(Debug)]
struct FileSink {
    queue: Arc<LineQueue>,
}

impl FileSink {
    fn start(out: Box<dyn Write + Send>, max_lines: usize) -> io::Result<FileSink> {
        let queue = Arc::new(LineQueue::new(max_lines, 64 * 1024, FILE_LINGER));
        let q = queue.clone();
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || {
                let mut out = BufWriter::with_capacity(64 * 1024, out);
                loop {
                    let (batch, _) = q.next();
                    for line in &batch.lines {
                        let _ = out.write_all(line.text.as_bytes());
                    }
                    let _ = out.flush();
                    for f in batch.flushes {
                        let _ = f.send(());
                    }
                    if batch.last {
                        return;
                    }
                }
            })?;
        Ok(FileSink { queue })
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Formats a UNIX time as RFC 3339 UTC with milliseconds (`2026-11-28T21:18:14.123Z`).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// A disk that stops: writes block until the test lets them go.
    struct Stuck(std::sync::mpsc::Receiver<()>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn record() -> AccessRecord {
        AccessRecord {
            time: String::new(),
            client: String::new(),
            listener: String::new(),
            method: "GET".into(),
            host: String::new(),
            path: "/".into(),
            protocol: "HTTP/1.1",
            status: 200,
            bytes: 0,
            duration_ms: 0.0,
            route: String::new(),
            cluster: String::new(),
            upstream: String::new(),
            attempts: 0,
            request_id: String::new(),
            reason: "",
            trace_id: String::new(),
            span_id: String::new(),
        }
    }

    #[test]
    fn a_stuck_writer_drops_and_counts_lines_instead_of_growing_the_queue() {
        let (release, stuck) = std::sync::mpsc::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let log = AccessLog::to_writer(Box::new(Stuck(stuck)), 100, dropped.clone()).unwrap();
        for _ in 0..10_000 {
            log.write(&record());
        }
        // Held besides the queue's 100: what the writer's 64 KiB buffer takes before its first
        // (stuck) write, and the line in hand.
        let line = serde_json::to_string(&record()).unwrap().len() + 1;
        let held = 100 + 64 * 1024 / line + 2;
        let n = dropped.load(Relaxed);
        assert!(n >= 10_000 - held as u64 && n < 10_000, "dropped {n}");
        drop(release);
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day) 12:34:56.789
        assert_eq!(
            super::rfc3339(UNIX_EPOCH + Duration::from_millis(951_827_696_789)),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            super::rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_900_000)),
            "2026-11-28T21:06:40.000Z"
        );
    }
}
