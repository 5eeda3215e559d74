//! The records inside a v2 batch: one validating walker shared by produce (every
//! client batch is checked before it is stored), compaction (`compact::parse_records`)
//! and the `__consumer_offsets` replay.
//!
//! Record layout (KIP-98), all lengths zigzag varints, timestamp delta a varlong:
//! ```text
//! length | attributes i8 | timestamp_delta | offset_delta | key_len key | value_len value
//!        | header_count [ header_key_len header_key | header_value_len header_value ]
//! ```
//! The walker reads lengths only (never copies key, value or header bytes), so an
//! uncompressed batch is checked in place and stored as received. A compressed one is
//! decompressed into a caller-owned bounded buffer first (`decompress_bounded`).
//!
//! Every count is checked against the bytes that could hold it before it drives a
//! loop: a header count must fit two bytes per header in the record, a record count
//! is checked against what the bytes actually hold.

use std::io::Read;
use std::ops::Range;

use super::batch::{BatchHeader, BATCH_HEADER_LEN};
use super::compact::Codec;
use super::error::StorageError;

/// Attribute bit 5: a control batch (transaction markers), written by brokers only.
pub const ATTR_CONTROL: i16 = 0x20;
/// Decompressed records of one produced batch above this are refused: bounds the
/// memory a compression bomb can take on the produce path. Far above what clients
/// send (their batches are sized before compression, at most `message.max.bytes`).
pub const PRODUCE_RECORDS_BYTES_MAX: usize = 64 << 20;
/// A zstd frame may ask for a window up to 2^27 bytes by default; clients compress
/// with small levels (windows of a few MiB). Refusing larger windows on produce
/// keeps a hostile frame from taking 128 MiB of decoder memory.
const PRODUCE_ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// Smallest header on the wire: a key length and a value length, one byte each.
const HEADER_BYTES_MIN: usize = 2;
/// Decompression output grows by doubling from this, up to the bound exactly.
const DECOMPRESS_CHUNK_BYTES: usize = 64 << 10;
const _: () = assert!(PRODUCE_RECORDS_BYTES_MAX <= super::compact::RECORDS_BYTES_MAX);

/// One record, as ranges into the (decompressed) records section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRef {
    /// The whole record, length prefix included.
    pub bytes: Range<usize>,
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub key: Option<Range<usize>>,
    /// `None`: a null value (a tombstone).
    pub value: Option<Range<usize>>,
}

fn invalid(index: usize, at: usize, what: &str) -> StorageError {
    StorageError::InvalidRecord(format!("record {index} at byte {at}: {what}"))
}

/// Zigzag varint of at most 5 bytes into an i32 (Kafka's `readVarint`).
#[inline(always)]
fn varint(b: &[u8], p: &mut usize) -> Option<i32> {
    let first = *b.get(*p)?;
    *p += 1;
    if first < 0x80 {
        let u = u32::from(first);
        return Some(((u >> 1) as i32) ^ -((u & 1) as i32));
    }
    let mut u = u64::from(first & 0x7f);
    for shift in [7u32, 14, 21, 28] {
        let byte = *b.get(*p)?;
        *p += 1;
        u |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            let u = u32::try_from(u).ok()?;
            return Some(((u >> 1) as i32) ^ -((u & 1) as i32));
        }
    }
    None
}

/// Zigzag varlong of at most 10 bytes (Kafka's `readVarlong`).
#[inline(always)]
fn varlong(b: &[u8], p: &mut usize) -> Option<i64> {
    let mut u: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(*p)?;
        *p += 1;
        u |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(((u >> 1) as i64) ^ -((u & 1) as i64));
        }
    }
    None
}

/// A length-prefixed field of `len` bytes at `p` inside `b` (whose end is the
/// record's end); -1 is null when `nullable`.
#[inline(always)]
fn field(
    b: &[u8],
    p: &mut usize,
    len: i32,
    nullable: bool,
) -> Result<Option<Range<usize>>, &'static str> {
    if len < 0 {
        return if len == -1 && nullable {
            Ok(None)
        } else {
            Err("negative length")
        };
    }
    let end = p
        .checked_add(len as usize)
        .filter(|e| *e <= b.len())
        .ok_or("length past the record")?;
    let r = *p..end;
    *p = end;
    Ok(Some(r))
}

/// Reads the record starting at `*p` (the `index`th), leaving `*p` at its end.
#[inline(always)]
fn read_record(raw: &[u8], p: &mut usize, index: usize) -> Result<RecordRef, StorageError> {
    let start = *p;
    let bad = |what: &str| invalid(index, start, what);
    let len = varint(raw, p).ok_or_else(|| bad("bad length varint"))?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| p.checked_add(l))
        .filter(|e| *e <= raw.len())
        .ok_or_else(|| bad("length past the records"))?;
    let body = &raw[..end];
    if *p >= end {
        return Err(bad("empty record"));
    }
    *p += 1; // attributes: no bits are defined for v2 records
    let timestamp_delta = varlong(body, p).ok_or_else(|| bad("bad timestamp delta"))?;
    let offset_delta = varint(body, p).ok_or_else(|| bad("bad offset delta"))?;
    let key_len = varint(body, p).ok_or_else(|| bad("bad key length"))?;
    let key = field(body, p, key_len, true).map_err(|e| bad(&format!("key: {e}")))?;
    let value_len = varint(body, p).ok_or_else(|| bad("bad value length"))?;
    let value = field(body, p, value_len, true).map_err(|e| bad(&format!("value: {e}")))?;
    let headers = varint(body, p).ok_or_else(|| bad("bad header count"))?;
    let headers = usize::try_from(headers).map_err(|_| bad("negative header count"))?;
    if headers > (end - *p) / HEADER_BYTES_MIN {
        return Err(bad(&format!(
            "{headers} headers cannot fit the {} bytes left in the record",
            end - *p
        )));
    }
    for h in 0..headers {
        let k = varint(body, p).ok_or_else(|| bad("bad header key length"))?;
        field(body, p, k, false).map_err(|e| bad(&format!("header {h} key: {e}")))?;
        let v = varint(body, p).ok_or_else(|| bad("bad header value length"))?;
        field(body, p, v, true).map_err(|e| bad(&format!("header {h} value: {e}")))?;
    }
    if *p != end {
        return Err(bad(&format!(
            "{} bytes past the last field of the record",
            end - *p
        )));
    }
    Ok(RecordRef {
        bytes: start..end,
        offset_delta,
        timestamp_delta,
        key,
        value,
    })
}

/// Walks every record of a records section, which must hold exactly `count` records
/// and nothing after them; calls `f(index, record)` for each. Stops at the first
/// error (from the bytes or from `f`). Bounded: every record takes at least 7 bytes.
#[inline]
pub fn walk_records(
    raw: &[u8],
    count: i32,
    mut f: impl FnMut(usize, &RecordRef) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let count = usize::try_from(count)
        .map_err(|_| StorageError::InvalidRecord(format!("negative record count {count}")))?;
    let mut p = 0usize;
    let mut index = 0usize;
    while p < raw.len() {
        if index == count {
            return Err(invalid(
                index,
                p,
                &format!(
                    "the batch claims {count} records but {} bytes follow them",
                    raw.len() - p
                ),
            ));
        }
        let r = read_record(raw, &mut p, index)?;
        f(index, &r)?;
        index += 1;
    }
    if index != count {
        return Err(StorageError::InvalidRecord(format!(
            "the batch claims {count} records, its bytes hold {index}"
        )));
    }
    Ok(())
}

/// Decompresses `data` into `out` (cleared first), failing past `max` bytes without
/// ever holding more than `max + 1`: the buffer grows by doubling, capped at the bound.
pub fn decompress_bounded(
    codec: Codec,
    data: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), StorageError> {
    out.clear();
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StorageError::CorruptBatch(format!("{what} records: {e}"))
    };
    match codec {
        Codec::None => {
            if data.len() > max {
                return Err(StorageError::CorruptBatch(format!(
                    "records exceed {max} bytes"
                )));
            }
            out.extend_from_slice(data);
            Ok(())
        }
        Codec::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(data), out, max)
            .map_err(|e| corrupt("gzip", &e)),
        Codec::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(data), out, max)
            .map_err(|e| corrupt("lz4", &e)),
        Codec::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(data).map_err(|e| corrupt("zstd", &e))?;
            // Stored batches (compaction, replay) keep zstd's own limit: they were
            // accepted before this bound existed.
            if max <= PRODUCE_RECORDS_BYTES_MAX {
                d.window_log_max(PRODUCE_ZSTD_WINDOW_LOG_MAX)
                    .map_err(|e| corrupt("zstd", &e))?;
            }
            read_bounded(d, out, max).map_err(|e| corrupt("zstd", &e))
        }
        Codec::Snappy => super::compact::snappy_decompress_into(data, out, max),
    }
}

fn read_bounded(mut r: impl Read, out: &mut Vec<u8>, max: usize) -> std::io::Result<()> {
    let mut filled = 0usize;
    loop {
        if filled == out.len() {
            if out.len() > max {
                return Err(std::io::Error::other(format!("records exceed {max} bytes")));
            }
            let grow = out
                .len()
                .max(DECOMPRESS_CHUNK_BYTES)
                .min(max + 1 - out.len());
            out.reserve_exact(grow);
            out.resize(out.len() + grow, 0);
        }
        match r.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.truncate(filled);
    if filled > max {
        return Err(std::io::Error::other(format!("records exceed {max} bytes")));
    }
    Ok(())
}

/// What a produced batch is checked against besides its own bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProduceRules {
    /// `cleanup.policy` contains `compact`: every record needs a key.
    pub compacted: bool,
}

/// Checks every record of a batch a client produced, as Kafka's `LogValidator` does
/// for client appends: a known codec, no control batch (there are no transactions to
/// write markers), a record count matching the offset range, offset deltas 0, 1, ..,
/// every length inside its record and the records exactly filling the (decompressed)
/// records section, and keys on compacted topics. `batch` passed `validate_batch`.
/// `scratch` holds a compressed batch's records while they are walked; an
/// uncompressed batch is walked in place.
///
/// Errors: `CorruptBatch` (CORRUPT_MESSAGE) when the bytes cannot be read at all (an
/// unknown codec, a stream that does not decompress or is too large), `InvalidRecord`
/// (INVALID_RECORD) for records that lie or break a rule.
pub fn validate_produced(
    header: &BatchHeader,
    batch: &[u8],
    rules: ProduceRules,
    scratch: &mut Vec<u8>,
) -> Result<(), StorageError> {
    let codec = Codec::from_attributes(header.attributes).map_err(|e| match e {
        StorageError::InvalidBatch(m) => StorageError::CorruptBatch(m),
        e => e,
    })?;
    if header.attributes & ATTR_CONTROL != 0 {
        return Err(StorageError::InvalidRecord(
            "clients may not write control batches".into(),
        ));
    }
    if header.records_count <= 0 {
        return Err(StorageError::InvalidRecord(format!(
            "invalid record count {}",
            header.records_count
        )));
    }
    if i64::from(header.last_offset_delta) + 1 != i64::from(header.records_count) {
        return Err(StorageError::InvalidRecord(format!(
            "last offset delta {} does not match the record count {}",
            header.last_offset_delta, header.records_count
        )));
    }
    let body = batch.get(BATCH_HEADER_LEN..).unwrap_or_default();
    let raw: &[u8] = if codec == Codec::None {
        body
    } else {
        decompress_bounded(codec, body, scratch, PRODUCE_RECORDS_BYTES_MAX)?;
        scratch
    };
    walk_records(raw, header.records_count, |i, r| {
        if r.offset_delta as usize != i || r.offset_delta < 0 {
            return Err(StorageError::InvalidRecord(format!(
                "record {i} has offset delta {}",
                r.offset_delta
            )));
        }
        if rules.compacted && r.key.is_none() {
            return Err(StorageError::InvalidRecord(format!(
                "record {i}: a compacted topic cannot accept a record without a key"
            )));
        }
        Ok(())
    })
}

/// `validate_produced` with a per-thread scratch buffer (one per shard: validation
/// never awaits, so no two batches share it). A buffer a big batch grew is dropped
/// afterwards rather than kept per shard.
pub fn validate_produced_here(
    header: &BatchHeader,
    batch: &[u8],
    rules: ProduceRules,
) -> Result<(), StorageError> {
    /// Scratch kept between batches: enough for common compressed batches.
    const SCRATCH_KEEP_BYTES: usize = 1 << 20;
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|s| {
        let Ok(mut scratch) = s.try_borrow_mut() else {
            // Not reentrant in practice; a fresh buffer is correct anyway.
            return validate_produced(header, batch, rules, &mut Vec::new());
        };
        let result = validate_produced(header, batch, rules, &mut scratch);
        if scratch.capacity() > SCRATCH_KEEP_BYTES {
            *scratch = Vec::new();
        } else {
            scratch.clear();
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::batch::validate_batch;
    use crate::segment::compact::build_batch;
    use crate::segment::testing::{encode_batch, encode_keyed_batch};

    fn put_varint(out: &mut Vec<u8>, v: i64) {
        let mut u = ((v << 1) ^ (v >> 63)) as u64;
        while u >= 0x80 {
            out.push((u as u8 & 0x7f) | 0x80);
            u >>= 7;
        }
        out.push(u as u8);
    }

    /// A record from its parts; `len_fix` is added to the true length prefix.
    fn record(key: Option<&[u8]>, value: &[u8], headers: i64, delta: i64, len_fix: i64) -> Vec<u8> {
        let mut rec = vec![0u8];
        put_varint(&mut rec, 0);
        put_varint(&mut rec, delta);
        match key {
            Some(k) => {
                put_varint(&mut rec, k.len() as i64);
                rec.extend_from_slice(k);
            }
            None => put_varint(&mut rec, -1),
        }
        put_varint(&mut rec, value.len() as i64);
        rec.extend_from_slice(value);
        put_varint(&mut rec, headers);
        let mut out = Vec::new();
        put_varint(&mut out, rec.len() as i64 + len_fix);
        out.extend_from_slice(&rec);
        out
    }

    fn batch_of(raw: &[u8], count: i32, codec: Codec) -> Vec<u8> {
        let t = validate_batch(&encode_batch(0, 0, &[b"x".as_slice()])).unwrap();
        build_batch(&t, codec, 0, count - 1, raw, count, None).unwrap()
    }

    fn check(b: &[u8], compacted: bool) -> Result<(), StorageError> {
        let h = validate_batch(b).unwrap();
        validate_produced(&h, b, ProduceRules { compacted }, &mut Vec::new())
    }

    const CODECS: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];

    #[test]
    fn valid_batches_of_every_codec_pass() {
        for codec in CODECS {
            let recs = vec![
                (Some(b"k".to_vec()), Some(b"v".to_vec())),
                (Some(b"k2".to_vec()), None),
            ];
            let b = encode_keyed_batch(0, 0, &recs, codec);
            check(&b, true).unwrap();
        }
        check(&encode_batch(0, 0, &[b"a".as_slice(), b"bb"]), false).unwrap();
    }

    #[test]
    fn lying_records_are_invalid_for_every_codec() {
        let ok = record(Some(b"k"), b"v", 0, 0, 0);
        let cases: Vec<(&str, Vec<u8>, i32)> = vec![
            (
                "length past the records",
                record(Some(b"k"), b"v", 0, 0, 5),
                1,
            ),
            (
                "length short of the fields",
                record(Some(b"k"), b"v", 0, 0, -1),
                1,
            ),
            ("2^30 headers", record(Some(b"k"), b"v", 1 << 30, 0, 0), 1),
            ("count above the records", ok.clone(), 2),
            (
                "bytes after the records",
                [ok.clone(), ok.clone()].concat(),
                1,
            ),
            (
                "offset delta not its index",
                record(Some(b"k"), b"v", 0, 3, 0),
                1,
            ),
            (
                "null key on a compacted topic",
                record(None, b"v", 0, 0, 0),
                1,
            ),
        ];
        for codec in CODECS {
            for (what, raw, count) in &cases {
                let b = batch_of(raw, *count, codec);
                let e = check(&b, true).expect_err(what);
                assert_eq!(e.kafka_error_code(), 87, "{what} {codec:?}: {e}");
            }
            check(&batch_of(&ok, 1, codec), true).unwrap();
        }
        // Key length past the record: patch the key length of a valid record.
        let mut raw = record(Some(b"k"), b"v", 0, 0, 0);
        raw[4] = 40; // zigzag 20
        let e = check(&batch_of(&raw, 1, Codec::None), false).unwrap_err();
        assert!(e.to_string().contains("key"), "{e}");
    }

    #[test]
    fn unknown_codecs_control_batches_and_bad_streams_are_refused() {
        let mut b = encode_batch(0, 0, &[b"x".as_slice()]).to_vec();
        for codec in 5..=7 {
            b[22] = codec;
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            assert_eq!(check(&b, false).unwrap_err().kafka_error_code(), 2);
        }
        b[22] = 0x20;
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(check(&b, false).unwrap_err().kafka_error_code(), 87);
        // gzip attribute over uncompressed records.
        b[22] = 1;
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(check(&b, false).unwrap_err().kafka_error_code(), 2);
    }

    #[test]
    fn a_compression_bomb_stops_at_the_bound() {
        let zeros = vec![0u8; 3 << 20];
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let c = crate::segment::compact::compress(codec, &zeros).unwrap();
            let mut out = Vec::new();
            let e = decompress_bounded(codec, &c, &mut out, 1 << 20).unwrap_err();
            assert_eq!(e.kafka_error_code(), 2, "{codec:?}");
            assert!(
                out.capacity() <= (1 << 20) + 1 + (64 << 10),
                "{codec:?} {}",
                out.capacity()
            );
            decompress_bounded(codec, &c, &mut out, 3 << 20).unwrap();
            assert_eq!(out, zeros);
        }
    }
}
