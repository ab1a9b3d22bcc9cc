use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::mpsc;

use serde::Serialize;

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
    /// Upstream endpoint address, empty when the request was not forwarded.
    pub upstream: String,
    /// The request id (`x-request-id`).
    pub request_id: String,
}

/// An access log sink. Lines are formatted by the caller's thread and written by a dedicated
/// thread, so a slow disk never stalls the data path.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
}

impl AccessLog {
    /// Opens `stdout`, `stderr` or a file (appended to).
    pub fn open(path: &str) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match path {
            "stdout" => Box::new(io::stdout()),
            "stderr" => Box::new(io::stderr()),
            file => Box::new(OpenOptions::new().create(true).append(true).open(file)?),
        };
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || {
                let mut out = BufWriter::with_capacity(64 * 1024, out);
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    // Flush when the queue is drained: batches under load, prompt when quiet.
                    while let Ok(line) = rx.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AccessLog { tx })
    }

    /// Queues one record.
    pub fn write(&self, record: &AccessRecord) {
        if let Ok(mut line) = serde_json::to_string(record) {
            line.push('\n');
            let _ = self.tx.send(line);
        }
    }
}

/// Formats a UNIX time as RFC 3339 UTC with milliseconds (`2026-11-28T21:18:14.123Z`).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian, era arithmetic).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

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
