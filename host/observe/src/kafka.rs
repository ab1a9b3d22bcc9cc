//! Access log lines produced to a Kafka topic.
//!
//! The data path hands each line to [`KafkaSink::push`]: a short lock on a bounded queue, never
//! a wait (a full queue drops the line and counts it). A thread of its own drains the queue in
//! batches — when a batch fills, when the oldest line has waited `linger`, on a flush, or at
//! close — finds each partition's leader with a Metadata request, and sends one Produce request
//! per leader, with blocking sockets under the configured timeout. A batch that cannot be sent
//! is dropped and counted, never retried into a growing backlog: when Kafka is slow or down the
//! proxy loses log lines, not latency or memory.
//!
//! Why a client of our own rather than librdkafka or rskafka: this needs one thing — fire
//! batches of lines at a topic with a chosen `acks`, in bounded memory, never blocking — and
//! that is three messages of the protocol (`wire`). librdkafka would bring a C build and a
//! second queue with its own memory rules to keep in step with ours; rskafka always asks for
//! `acks=all` and retries internally.

mod wire;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use weir_config::{KafkaCompression, KafkaConfig, KafkaKey};

use crate::lines::{Line, LineQueue};
use wire::{Codec, Metadata, Record};

/// Largest response read from a broker: Metadata for one topic and Produce answers are small;
/// a peer announcing more is broken or hostile.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// How long metadata is trusted before it is asked for again (it is also refreshed after any
/// error that suggests leaders moved).
const METADATA_MAX_AGE: Duration = Duration::from_secs(60);
/// Warnings about a failing Kafka are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What became of access log lines sent to Kafka (`weir_access_log_kafka_*`).
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Lines waiting now.
    pub queued: AtomicU64,
    /// Lines a broker accepted (with `acks: 0`: lines sent).
    pub sent: AtomicU64,
    /// Lines dropped because the queue was full (`max_queue_lines`, or 64 MiB of lines).
    pub dropped_queue_full: AtomicU64,
    /// Lines dropped because their batch could not be sent or was refused.
    pub dropped_send_failed: AtomicU64,
}

impl KafkaStats {
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP weir_access_log_kafka_queued Access log lines waiting to be produced to Kafka.\n# TYPE weir_access_log_kafka_queued gauge\n");
        let _ = writeln!(
            out,
            "weir_access_log_kafka_queued {}",
            self.queued.load(Relaxed)
        );
        out.push_str("# HELP weir_access_log_kafka_sent_total Access log lines a Kafka broker accepted.\n# TYPE weir_access_log_kafka_sent_total counter\n");
        let _ = writeln!(
            out,
            "weir_access_log_kafka_sent_total {}",
            self.sent.load(Relaxed)
        );
        out.push_str("# HELP weir_access_log_kafka_dropped_total Access log lines dropped: the queue was full, or their batch could not be sent.\n# TYPE weir_access_log_kafka_dropped_total counter\n");
        for (reason, n) in [
            ("queue_full", &self.dropped_queue_full),
            ("send_failed", &self.dropped_send_failed),
        ] {
            let _ = writeln!(
                out,
                "weir_access_log_kafka_dropped_total{{reason=\"{reason}\"}} {}",
                n.load(Relaxed)
            );
        }
    }
}

/// A running Kafka sink; dropping the last handle lets its thread send what is queued and end.
#[derive(Debug)]
pub struct KafkaSink {
    queue: Arc<LineQueue>,
    stats: Arc<KafkaStats>,
    key: KafkaKey,
    /// What it was started from: a new config with the same settings keeps this sink.
    pub settings: KafkaConfig,
}

impl KafkaSink {
    /// Starts the producer thread for `config`. Nothing is sent (or connected) until lines come.
    pub fn start(config: &KafkaConfig, stats: Arc<KafkaStats>) -> std::io::Result<KafkaSink> {
        let queue = Arc::new(LineQueue::new(
            config.max_queue_lines,
            config.max_batch_bytes.bytes() as usize,
            config.linger,
        ));
        let producer = Producer {
            queue: queue.clone(),
            stats: stats.clone(),
            config: config.clone(),
            codec: match config.compression {
                KafkaCompression::None => Codec::None,
                KafkaCompression::Gzip => Codec::Gzip,
                KafkaCompression::Lz4 => Codec::Lz4,
            },
            conns: HashMap::new(),
            metadata: None,
            correlation: 0,
            round_robin: 0,
            last_warning: None,
        };
        std::thread::Builder::new()
            .name("weir-kafka".into())
            .spawn(move || producer.run())?;
        Ok(KafkaSink {
            queue,
            stats,
            key: config.key,
            settings: config.clone(),
        })
    }

    /// Queues one line (route and request id pick its key), or counts it dropped when the
    /// queue is full. Never waits.
    pub fn push(&self, text: String, route: &str, request_id: &str) {
        let key = match self.key {
            KafkaKey::Route if !route.is_empty() => Some(route.into()),
            KafkaKey::RequestId if !request_id.is_empty() => Some(request_id.into()),
            _ => None,
        };
        match self.queue.push(Line { key, text }) {
            Ok(n) => self.stats.queued.store(n as u64, Relaxed),
            Err(_) => {
                self.stats.dropped_queue_full.fetch_add(1, Relaxed);
            }
        }
    }

    /// Sends every line queued so far, waiting at most `limit` (shutdown: the last lines are not
    /// lost with the process). Blocking: call it off the async runtime.
    pub fn flush(&self, limit: Duration) -> bool {
        self.queue.flush().recv_timeout(limit).is_ok()
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// The producer thread's state.
struct Producer {
    queue: Arc<LineQueue>,
    stats: Arc<KafkaStats>,
    config: KafkaConfig,
    codec: Codec,
    /// Open connections, by broker node id (-1: a bootstrap broker).
    conns: HashMap<i32, TcpStream>,
    metadata: Option<(Metadata, Instant)>,
    correlation: i32,
    round_robin: usize,
    last_warning: Option<Instant>,
}

impl Producer {
    fn run(mut self) {
        loop {
            let (batch, waiting) = self.queue.next();
            self.stats.queued.store(waiting as u64, Relaxed);
            if !batch.lines.is_empty() {
                let n = batch.lines.len() as u64;
                match self.send(&batch.lines) {
                    Ok(sent) => {
                        self.stats.sent.fetch_add(sent, Relaxed);
                        self.stats.dropped_send_failed.fetch_add(n - sent, Relaxed);
                    }
                    Err(e) => {
                        self.stats.dropped_send_failed.fetch_add(n, Relaxed);
                        self.forget();
                        self.warn(&e);
                    }
                }
            }
            for f in batch.flushes {
                let _ = f.send(());
            }
            if batch.last {
                return;
            }
        }
    }

    /// Drops connections and metadata after a failure: the next batch starts afresh.
    fn forget(&mut self) {
        self.conns.clear();
        self.metadata = None;
    }

    fn warn(&mut self, e: &str) {
        if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last_warning = Some(Instant::now());
            tracing::warn!(
                topic = %self.config.topic,
                "kafka access log: a batch was dropped: {e}"
            );
        }
    }

    /// Sends `batch`; returns how many lines a broker accepted.
    fn send(&mut self, batch: &[Line]) -> Result<u64, String> {
        let meta = self.metadata()?;
        let leaders: Vec<(i32, i32)> = (meta.partitions.iter())
            .copied()
            .filter(|&(_, leader)| leader >= 0)
            .collect();
        if leaders.is_empty() {
            return Err(format!(
                "topic {:?} has no partition with a leader",
                self.config.topic
            ));
        }
        // Lines by partition, keyed lines where the Java client would put them.
        let sticky = leaders[self.round_robin % leaders.len()].0;
        self.round_robin = self.round_robin.wrapping_add(1);
        let n = meta.partitions.len() as u32;
        let mut by_partition: HashMap<i32, Vec<&Line>> = HashMap::new();
        for line in batch {
            let p = match &line.key {
                Some(k) => (wire::murmur2(k.as_bytes()) & 0x7fff_ffff) % n,
                None => sticky as u32,
            };
            by_partition.entry(p as i32).or_default().push(line);
        }
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let leader_of: HashMap<i32, i32> = meta.partitions.iter().copied().collect();
        let mut by_leader: HashMap<i32, Vec<(i32, Vec<u8>, u64)>> = HashMap::new();
        let mut sent = 0;
        for (partition, lines) in by_partition {
            let records: Vec<Record<'_>> = (lines.iter())
                .map(|l| Record {
                    key: l.key.as_deref().map(str::as_bytes),
                    value: l.text.as_bytes(),
                })
                .collect();
            let leader = leader_of.get(&partition).copied().unwrap_or(-1);
            if leader < 0 {
                continue; // counted as dropped by the caller
            }
            let encoded = wire::record_batch(&records, now_ms, self.codec);
            (by_leader.entry(leader).or_default()).push((partition, encoded, lines.len() as u64));
        }
        let mut refresh = false;
        let mut failure = None;
        for (leader, batches) in by_leader {
            match self.produce(leader, &meta, &batches) {
                Ok((ok, stale)) => {
                    sent += ok;
                    refresh |= stale;
                }
                Err(e) => {
                    self.conns.remove(&leader);
                    refresh = true;
                    failure = Some(e);
                }
            }
        }
        if refresh {
            self.metadata = None;
        }
        match failure {
            Some(e) if sent == 0 => Err(e),
            Some(e) => {
                self.warn(&e);
                Ok(sent)
            }
            None => Ok(sent),
        }
    }

    /// One Produce request to `leader`; returns the lines accepted, and whether an error
    /// suggests the metadata is stale.
    fn produce(
        &mut self,
        leader: i32,
        meta: &Metadata,
        batches: &[(i32, Vec<u8>, u64)],
    ) -> Result<(u64, bool), String> {
        let broker = (meta.brokers.iter())
            .find(|b| b.node_id == leader)
            .ok_or_else(|| format!("leader {leader} is not among the brokers"))?;
        let addr = format!("{}:{}", broker.host, broker.port);
        let timeout_ms = self.config.timeout.as_millis().min(i32::MAX as u128) as i32;
        let acks = self.config.acks.wire();
        let parts: Vec<(i32, &[u8])> = (batches.iter())
            .map(|(p, b, _)| (*p, b.as_slice()))
            .collect();
        let correlation = self.next_correlation();
        let req = wire::produce_request(
            correlation,
            &self.config.client_id,
            acks,
            timeout_ms,
            &self.config.topic,
            &parts,
        );
        if acks == 0 {
            self.exchange(leader, &addr, &req, None)?;
            return Ok((batches.iter().map(|b| b.2).sum(), false));
        }
        let body = self.exchange(leader, &addr, &req, Some(correlation))?;
        let answers =
            wire::produce_response(&body).map_err(|e| format!("produce answer: {}", e.0))?;
        let mut ok = 0;
        let mut stale = false;
        let mut errors = Vec::new();
        for (partition, _, lines) in batches {
            match answers.iter().find(|(p, _)| p == partition) {
                Some((_, 0)) => ok += lines,
                Some((_, code)) => {
                    // Leadership moved, or the topic or partition is gone: ask again next time.
                    stale |= matches!(code, 3 | 5 | 6 | 13 | 15 | 75 | 76);
                    errors.push(format!("partition {partition}: error {code}"));
                }
                None => errors.push(format!("partition {partition}: no answer")),
            }
        }
        if !errors.is_empty() {
            self.warn(&errors.join(", "));
        }
        Ok((ok, stale))
    }

    fn next_correlation(&mut self) -> i32 {
        self.correlation = self.correlation.wrapping_add(1) & i32::MAX;
        self.correlation
    }

    /// The topic's metadata: kept for [`METADATA_MAX_AGE`], else asked of the bootstrap
    /// brokers in turn.
    fn metadata(&mut self) -> Result<Metadata, String> {
        if let Some((m, at)) = &self.metadata
            && at.elapsed() < METADATA_MAX_AGE
        {
            return Ok(m.clone());
        }
        let mut last = String::from("no brokers");
        for addr in self.config.brokers.clone() {
            let correlation = self.next_correlation();
            let req =
                wire::metadata_request(correlation, &self.config.client_id, &self.config.topic);
            let got = self
                .exchange(-1, &addr, &req, Some(correlation))
                .and_then(|body| {
                    wire::metadata_response(&body, &self.config.topic)
                        .map_err(|e| format!("metadata answer from {addr}: {}", e.0))
                });
            self.conns.remove(&-1);
            match got {
                Ok(m) if m.topic_error == 0 => {
                    self.metadata = Some((m.clone(), Instant::now()));
                    return Ok(m);
                }
                Ok(m) => {
                    last = format!(
                        "topic {:?}: error {} from {addr}",
                        self.config.topic, m.topic_error
                    );
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Writes `req` to the connection for `node` (opened to `addr` if need be) and, when a
    /// correlation id is given, reads the answer's body.
    fn exchange(
        &mut self,
        node: i32,
        addr: &str,
        req: &[u8],
        correlation: Option<i32>,
    ) -> Result<Vec<u8>, String> {
        let timeout = self.config.timeout;
        let stream = match self.conns.entry(node) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(connect(addr, timeout)?),
        };
        let result = (|| {
            stream
                .write_all(req)
                .map_err(|e| format!("send to {addr}: {e}"))?;
            let Some(correlation) = correlation else {
                return Ok(Vec::new());
            };
            let mut size = [0; 4];
            stream
                .read_exact(&mut size)
                .map_err(|e| format!("answer from {addr}: {e}"))?;
            let size = i32::from_be_bytes(size);
            if !(4..=MAX_RESPONSE_BYTES as i32).contains(&size) {
                return Err(format!("answer from {addr}: a frame of {size} bytes"));
            }
            let mut body = vec![0; size as usize];
            stream
                .read_exact(&mut body)
                .map_err(|e| format!("answer from {addr}: {e}"))?;
            let got = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            if got != correlation {
                return Err(format!(
                    "answer from {addr}: correlation id {got}, expected {correlation}"
                ));
            }
            body.drain(..4);
            Ok(body)
        })();
        if result.is_err() {
            self.conns.remove(&node);
        }
        result
    }
}

/// A blocking connection to `addr` with every wait bounded by `timeout`.
fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolve {addr}: {e}"))?
        .collect();
    let mut last = format!("resolve {addr}: no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                s.set_read_timeout(Some(timeout))
                    .and_then(|()| s.set_write_timeout(Some(timeout)))
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                return Ok(s);
            }
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    Err(last)
}
