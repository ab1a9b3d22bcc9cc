//! The few Kafka protocol messages a producer needs, encoded and decoded by hand: Metadata v4
//! (which partitions a topic has and who leads each), Produce v3 (record batches, magic 2) and
//! their responses. Both versions are non-flexible and served by every broker since Kafka 1.0,
//! Kafka 4 included (which dropped Produce below v3 and Metadata below v4).
//!
//! Everything read from a broker is bounds-checked: a short, truncated or hostile response is
//! an error, never a panic or an allocation sized by the peer.

use std::io::Write as _;

/// API keys.
const PRODUCE: i16 = 0;
const METADATA: i16 = 3;

/// An encoding buffer.
#[derive(Default)]
pub(crate) struct Writer(pub Vec<u8>);

impl Writer {
    pub fn i8(&mut self, v: i8) {
        self.0.push(v as u8);
    }
    pub fn i16(&mut self, v: i16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// A `string`: i16 length, UTF-8 bytes (names are checked to fit by config validation).
    pub fn string(&mut self, s: &str) {
        self.i16(i16::try_from(s.len()).unwrap_or(i16::MAX));
        self.0
            .extend_from_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
    }
    /// A null `nullable_string`.
    pub fn null_string(&mut self) {
        self.i16(-1);
    }
    /// An array's length.
    pub fn len(&mut self, n: usize) {
        self.i32(i32::try_from(n).unwrap_or(i32::MAX));
    }
    /// A zigzag varint (records use them for lengths and deltas).
    pub fn varint(&mut self, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    /// Bytes with a varint length; `None` is length -1.
    pub fn varint_bytes(&mut self, b: Option<&[u8]>) {
        match b {
            None => self.varint(-1),
            Some(b) => {
                self.varint(b.len() as i64);
                self.0.extend_from_slice(b);
            }
        }
    }
}

/// A decoding cursor over one response.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

/// What went wrong reading a response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub &'static str);

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub fn i8(&mut self) -> Result<i8, Malformed> {
        Ok(self.take(1, "truncated")?[0] as i8)
    }
    pub fn i16(&mut self) -> Result<i16, Malformed> {
        let b = self.take(2, "truncated")?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    pub fn i32(&mut self) -> Result<i32, Malformed> {
        let b = self.take(4, "truncated")?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn i64(&mut self) -> Result<i64, Malformed> {
        let b = self.take(8, "truncated")?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    /// A `nullable_string` (`None` for null); text that is not UTF-8 is an error.
    pub fn nullable_string(&mut self) -> Result<Option<&'a str>, Malformed> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(None);
        }
        let b = self.take(n as usize, "truncated string")?;
        std::str::from_utf8(b)
            .map(Some)
            .map_err(|_| Malformed("a string is not UTF-8"))
    }
    pub fn string(&mut self) -> Result<&'a str, Malformed> {
        self.nullable_string()?
            .ok_or(Malformed("a null where a string must be"))
    }
    /// An array's length, checked against what is left (each element takes at least
    /// `min_size` bytes), so a hostile length cannot make the reader allocate or loop for it.
    pub fn len(&mut self, min_size: usize) -> Result<usize, Malformed> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(0);
        }
        let n = n as usize;
        if n.saturating_mul(min_size.max(1)) > self.buf.len() {
            return Err(Malformed("an array longer than the response"));
        }
        Ok(n)
    }
}

/// One request on the wire: size, header v1 (key, version, correlation id, client id), body.
pub(crate) fn request(
    key: i16,
    version: i16,
    correlation: i32,
    client_id: &str,
    body: impl FnOnce(&mut Writer),
) -> Vec<u8> {
    let mut w = Writer(vec![0; 4]);
    w.i16(key);
    w.i16(version);
    w.i32(correlation);
    w.string(client_id);
    body(&mut w);
    let size = (w.0.len() - 4) as i32;
    w.0[..4].copy_from_slice(&size.to_be_bytes());
    w.0
}

/// Metadata v4 for one topic (auto-creation allowed where the broker allows it).
pub(crate) fn metadata_request(correlation: i32, client_id: &str, topic: &str) -> Vec<u8> {
    request(METADATA, 4, correlation, client_id, |w| {
        w.len(1);
        w.string(topic);
        w.i8(1);
    })
}

/// A broker, as Metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broker {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

/// A topic's partitions and their leaders (-1: none now).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Metadata {
    pub brokers: Vec<Broker>,
    /// Kafka error code for the topic (0: none).
    pub topic_error: i16,
    /// (partition, leader node id), sorted by partition.
    pub partitions: Vec<(i32, i32)>,
}

/// Reads a Metadata v4 response body (after the correlation id) for `topic`.
pub(crate) fn metadata_response(body: &[u8], topic: &str) -> Result<Metadata, Malformed> {
    let mut r = Reader::new(body);
    let _throttle = r.i32()?;
    let mut m = Metadata {
        topic_error: 3, // UNKNOWN_TOPIC_OR_PARTITION, unless the topic is in the answer
        ..Metadata::default()
    };
    for _ in 0..r.len(14)? {
        let node_id = r.i32()?;
        let host = r.string()?.to_owned();
        let port = r.i32()?;
        let _rack = r.nullable_string()?;
        m.brokers.push(Broker {
            node_id,
            host,
            port,
        });
    }
    let _cluster_id = r.nullable_string()?;
    let _controller = r.i32()?;
    for _ in 0..r.len(9)? {
        let error = r.i16()?;
        let name = r.string()?;
        let _internal = r.i8()?;
        let mut partitions = Vec::new();
        for _ in 0..r.len(18)? {
            let _error = r.i16()?;
            let index = r.i32()?;
            let leader = r.i32()?;
            for _ in 0..r.len(4)? {
                r.i32()?;
            }
            for _ in 0..r.len(4)? {
                r.i32()?;
            }
            partitions.push((index, leader));
        }
        if name == topic {
            m.topic_error = error;
            partitions.sort_unstable();
            m.partitions = partitions;
        }
    }
    Ok(m)
}

/// Produce v3 for one topic: (partition, record batch) pairs.
pub(crate) fn produce_request(
    correlation: i32,
    client_id: &str,
    acks: i16,
    timeout_ms: i32,
    topic: &str,
    batches: &[(i32, &[u8])],
) -> Vec<u8> {
    request(PRODUCE, 3, correlation, client_id, |w| {
        w.null_string();
        w.i16(acks);
        w.i32(timeout_ms);
        w.len(1);
        w.string(topic);
        w.len(batches.len());
        for (partition, batch) in batches {
            w.i32(*partition);
            w.len(batch.len());
            w.0.extend_from_slice(batch);
        }
    })
}

/// Reads a Produce v3 response body: (partition, error code) for each partition answered.
pub(crate) fn produce_response(body: &[u8]) -> Result<Vec<(i32, i16)>, Malformed> {
    let mut r = Reader::new(body);
    let mut out = Vec::new();
    for _ in 0..r.len(6)? {
        let _name = r.string()?;
        for _ in 0..r.len(22)? {
            let partition = r.i32()?;
            let error = r.i16()?;
            let _base_offset = r.i64()?;
            let _append_time = r.i64()?;
            out.push((partition, error));
        }
    }
    let _throttle = r.i32()?;
    Ok(out)
}

/// How a record batch's records are compressed (the batch attribute's low bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    None = 0,
    Gzip = 1,
    Lz4 = 3,
}

/// One record: key and value.
pub(crate) struct Record<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
}

/// A record batch (magic 2) of `records`, timestamped `now_ms`, compressed with `codec`.
pub(crate) fn record_batch(records: &[Record<'_>], now_ms: i64, codec: Codec) -> Vec<u8> {
    let mut body = Writer::default();
    for (i, rec) in records.iter().enumerate() {
        let mut one = Writer::default();
        one.i8(0); // attributes
        one.varint(0); // timestamp delta
        one.varint(i as i64); // offset delta
        one.varint_bytes(rec.key);
        one.varint_bytes(Some(rec.value));
        one.varint(0); // headers
        body.varint(one.0.len() as i64);
        body.0.extend_from_slice(&one.0);
    }
    let records_bytes = match codec {
        Codec::None => body.0,
        Codec::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = gz.write_all(&body.0);
            gz.finish().unwrap_or_default()
        }
        Codec::Lz4 => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
            let _ = enc.write_all(&body.0);
            enc.finish().unwrap_or_default()
        }
    };
    // From attributes to the end: what the CRC covers.
    let mut tail = Writer::default();
    tail.i16(codec as i16);
    tail.i32(records.len().saturating_sub(1) as i32); // last offset delta
    tail.i64(now_ms); // base timestamp
    tail.i64(now_ms); // max timestamp
    tail.i64(-1); // producer id
    tail.i16(-1); // producer epoch
    tail.i32(-1); // base sequence
    tail.len(records.len());
    tail.0.extend_from_slice(&records_bytes);

    let mut w = Writer::default();
    w.i64(0); // base offset
    w.i32((4 + 1 + 4 + tail.0.len()) as i32); // batch length: epoch, magic, crc, tail
    w.i32(-1); // partition leader epoch
    w.i8(2); // magic
    w.0.extend_from_slice(&crc32c(&tail.0).to_be_bytes());
    w.0.extend_from_slice(&tail.0);
    w.0
}

/// CRC-32C (Castagnoli), as record batches carry it.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The Java client's default partitioner hash (murmur2, seed 0x9747b28c), so the same key lands
/// on the same partition whichever client produced it.
pub(crate) fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_murmur2_match_their_reference_values() {
        // RFC 3720 B.4: 32 bytes of zeros; the standard check value.
        assert_eq!(crc32c(&[0; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // The Java client's Utils.murmur2 on these keys (its own tests' vectors).
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(
            murmur2(b"a-little-bit-longer-string") as i32,
            -1_486_304_829
        );
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }

    #[test]
    fn varints_are_zigzag() {
        let mut w = Writer::default();
        for v in [0, -1, 1, -64, 64, 300] {
            w.varint(v);
        }
        assert_eq!(w.0, [0x00, 0x01, 0x02, 0x7f, 0x80, 0x01, 0xd8, 0x04]);
    }

    #[test]
    fn a_record_batch_has_the_magic_2_layout_and_a_valid_crc() {
        let records = [
            Record {
                key: Some(b"route"),
                value: b"{\"a\":1}\n",
            },
            Record {
                key: None,
                value: b"x",
            },
        ];
        for codec in [Codec::None, Codec::Gzip, Codec::Lz4] {
            let b = record_batch(&records, 1_700_000_000_000, codec);
            let mut r = Reader::new(&b);
            assert_eq!(r.i64(), Ok(0));
            let len = r.i32().unwrap() as usize;
            assert_eq!(len, b.len() - 12, "{codec:?}");
            assert_eq!(r.i32(), Ok(-1));
            assert_eq!(r.i8(), Ok(2));
            let crc = r.i32().unwrap() as u32;
            assert_eq!(crc, crc32c(&b[21..]), "{codec:?}");
            assert_eq!(r.i16(), Ok(codec as i16));
            assert_eq!(r.i32(), Ok(1), "last offset delta");
        }
        // Uncompressed, the records follow the count as written.
        let b = record_batch(&records, 5, Codec::None);
        let count_at = 12 + 4 + 1 + 4 + 2 + 4 + 8 + 8 + 8 + 2 + 4;
        assert_eq!(&b[count_at..count_at + 4], &2i32.to_be_bytes());
        let first = &b[count_at + 4..];
        // length, attributes 0, ts delta 0, offset delta 0, key len 5 "route"
        assert_eq!(&first[1..5], &[0, 0, 0, 10]);
        assert_eq!(&first[5..10], b"route");
    }

    #[test]
    fn hostile_responses_are_errors_not_panics_or_allocations() {
        // An array claiming 2^31-1 brokers in a 10-byte body.
        let mut w = Writer::default();
        w.i32(0);
        w.i32(i32::MAX);
        w.i16(0);
        assert!(metadata_response(&w.0, "t").is_err());
        // Truncated anywhere.
        let mut ok = Writer::default();
        ok.i32(0); // throttle
        ok.len(1);
        ok.i32(1);
        ok.string("127.0.0.1");
        ok.i32(9092);
        ok.null_string();
        ok.null_string();
        ok.i32(1);
        ok.len(1);
        ok.i16(0);
        ok.string("t");
        ok.i8(0);
        ok.len(1);
        ok.i16(0);
        ok.i32(0);
        ok.i32(1);
        ok.len(1);
        ok.i32(1);
        ok.len(1);
        ok.i32(1);
        let m = metadata_response(&ok.0, "t").expect("well formed");
        assert_eq!(m.partitions, [(0, 1)]);
        assert_eq!(m.topic_error, 0);
        assert_eq!(m.brokers[0].port, 9092);
        for cut in 0..ok.0.len() {
            assert!(metadata_response(&ok.0[..cut], "t").is_err(), "{cut}");
        }
        // A string that is not UTF-8, a negative string length other than -1.
        let mut bad = Writer::default();
        bad.i32(0);
        bad.len(1);
        bad.i32(1);
        bad.i16(2);
        bad.0.extend_from_slice(&[0xff, 0xfe]);
        assert!(metadata_response(&bad.0, "t").is_err());
        assert!(produce_response(&[0, 0, 0, 1]).is_err());
        assert_eq!(produce_response(&[0, 0, 0, 0, 0, 0, 0, 0]), Ok(vec![]));
    }
}
