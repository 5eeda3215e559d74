//! The records inside a v2 batch: one validating walker shared by produce (every
//! client batch is checked before it is stored), compaction (`compact::parse_records`)
//! and the `__consumer_offsets` replay.
//!
//! Record layout (KIP-98), all lengths zigzag varints, timestamp delta a varlong:
//! ```text
//! length | attributes i8 | timestamp_delta | offset_delta | key_len key | value_len value
//!        | header_count [ header_key_len header_key | header_value_len header_value ]
//! ```
//! The walker reads lengths only and passes over key, value and header bytes, from a
//! `Source`: a slice (an uncompressed batch checked in place and then stored as
//! received, or records already decompressed) or, on the produce path, a decompressor
//! read through a small window, so a compressed batch is checked without ever holding
//! its records: memory stays at the window (and the codec's own state) whatever the
//! records claim, and a compression bomb costs bounded CPU (`PRODUCE_RECORDS_BYTES_MAX`).
//!
//! Every count is checked against the bytes that could hold it before it drives a
//! loop: a header count must fit two bytes per header in the record; the record loop
//! ends with the bytes, and a record count is compared with what they held.

use std::io::Read;
use std::ops::Range;

use super::batch::{BatchHeader, BATCH_HEADER_LEN};
use super::compact::Codec;
use super::error::StorageError;

/// Attribute bit 5: a control batch (transaction markers), written by brokers only.
pub const ATTR_CONTROL: i16 = 0x20;
/// Decompressed records of one produced batch above this are refused: bounds the CPU a
/// compression bomb takes on the produce path (and, for snappy, whose blocks do not
/// stream, the memory). Far above what clients send (they size batches before or
/// around compression, at most `message.max.bytes`).
pub const PRODUCE_RECORDS_BYTES_MAX: usize = 64 << 20;
/// A zstd frame may ask for a window up to 2^27 bytes by default; clients compress
/// with small levels (windows of a few MiB). Refusing larger windows on produce
/// keeps a hostile frame from taking 128 MiB of decoder memory.
const PRODUCE_ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// The window a compressed produced batch is read through.
const STREAM_WINDOW_BYTES: usize = 32 << 10;
/// Smallest header on the wire: a key length and a value length, one byte each.
const HEADER_BYTES_MIN: usize = 2;
/// Decompression output grows by doubling from this, up to the bound exactly.
const DECOMPRESS_CHUNK_BYTES: usize = 64 << 10;
const _: () = assert!(PRODUCE_RECORDS_BYTES_MAX <= super::compact::RECORDS_BYTES_MAX);

/// One record, as ranges into the records section (positions in the decompressed
/// stream when read from one).
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

/// Where the walker reads a records section from. Reads never pass `limit` (the end
/// of the record being read).
trait Source {
    /// Bytes read so far: the position in the records section.
    fn pos(&self) -> usize;
    fn byte(&mut self, limit: usize) -> Option<u8>;
    /// Passes `n` bytes, all before `limit`.
    fn skip(&mut self, n: usize, limit: usize) -> Option<Range<usize>>;
    /// No bytes are left.
    fn at_end(&mut self) -> bool;
    /// The section surely ends before `end` (a record claiming to end there lies).
    fn ends_before(&mut self, end: usize) -> bool;
}

struct SliceSource<'a> {
    b: &'a [u8],
    p: usize,
}

impl Source for SliceSource<'_> {
    #[inline(always)]
    fn pos(&self) -> usize {
        self.p
    }
    #[inline(always)]
    fn byte(&mut self, limit: usize) -> Option<u8> {
        if self.p >= limit {
            return None;
        }
        let b = *self.b.get(self.p)?;
        self.p += 1;
        Some(b)
    }
    #[inline(always)]
    fn skip(&mut self, n: usize, limit: usize) -> Option<Range<usize>> {
        let end = self
            .p
            .checked_add(n)
            .filter(|e| *e <= limit && *e <= self.b.len())?;
        let r = self.p..end;
        self.p = end;
        Some(r)
    }
    #[inline(always)]
    fn at_end(&mut self) -> bool {
        self.p >= self.b.len()
    }
    #[inline(always)]
    fn ends_before(&mut self, end: usize) -> bool {
        end > self.b.len()
    }
}

/// A decompressor read through a window of `STREAM_WINDOW_BYTES`, failing once more
/// than `max` bytes came out. A decompression failure or the bound ends the stream
/// and is kept in `error`, which the caller reports instead of the walker's view.
struct StreamSource<'w, R: Read> {
    r: R,
    window: &'w mut [u8],
    at: usize,
    filled: usize,
    pos: usize,
    /// Bytes the decompressor produced so far.
    produced: usize,
    max: usize,
    done: bool,
    error: Option<StorageError>,
}

impl<'w, R: Read> StreamSource<'w, R> {
    fn new(r: R, window: &'w mut [u8], max: usize) -> Self {
        StreamSource {
            r,
            window,
            at: 0,
            filled: 0,
            pos: 0,
            produced: 0,
            max,
            done: false,
            error: None,
        }
    }

    /// Makes at least one unread byte available; false at the end of the stream.
    fn fill(&mut self) -> bool {
        if self.at < self.filled {
            return true;
        }
        if self.done {
            return false;
        }
        // Bounded: every pass either returns or retries an interrupted read.
        loop {
            match self.r.read(self.window) {
                Ok(0) => {
                    self.done = true;
                    return false;
                }
                Ok(n) => {
                    self.produced += n;
                    if self.produced > self.max {
                        self.done = true;
                        self.error = Some(StorageError::CorruptBatch(format!(
                            "decompressed records exceed {} bytes",
                            self.max
                        )));
                        return false;
                    }
                    self.at = 0;
                    self.filled = n;
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.done = true;
                    self.error = Some(StorageError::CorruptBatch(format!(
                        "records do not decompress: {e}"
                    )));
                    return false;
                }
            }
        }
    }
}

impl<R: Read> Source for StreamSource<'_, R> {
    fn pos(&self) -> usize {
        self.pos
    }
    fn byte(&mut self, limit: usize) -> Option<u8> {
        if self.pos >= limit || !self.fill() {
            return None;
        }
        let b = self.window[self.at];
        self.at += 1;
        self.pos += 1;
        Some(b)
    }
    fn skip(&mut self, n: usize, limit: usize) -> Option<Range<usize>> {
        let start = self.pos;
        let end = start.checked_add(n).filter(|e| *e <= limit)?;
        // Bounded by `n`: every pass passes at least one byte or returns.
        while self.pos < end {
            if !self.fill() {
                return None;
            }
            let k = (end - self.pos).min(self.filled - self.at);
            self.at += k;
            self.pos += k;
        }
        Some(start..end)
    }
    fn at_end(&mut self) -> bool {
        !self.fill()
    }
    fn ends_before(&mut self, end: usize) -> bool {
        if end > self.max && self.error.is_none() {
            self.error = Some(StorageError::CorruptBatch(format!(
                "a record ends past {} decompressed bytes",
                self.max
            )));
        }
        end > self.max
    }
}

fn invalid(index: usize, at: usize, what: &str) -> StorageError {
    StorageError::InvalidRecord(format!("record {index} at byte {at}: {what}"))
}

/// Zigzag varint of at most 5 bytes into an i32 (Kafka's `readVarint`).
#[inline(always)]
fn varint(s: &mut impl Source, limit: usize) -> Option<i32> {
    let first = s.byte(limit)?;
    if first < 0x80 {
        let u = u32::from(first);
        return Some(((u >> 1) as i32) ^ -((u & 1) as i32));
    }
    let mut u = u64::from(first & 0x7f);
    for shift in [7u32, 14, 21, 28] {
        let byte = s.byte(limit)?;
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
fn varlong(s: &mut impl Source, limit: usize) -> Option<i64> {
    let mut u: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = s.byte(limit)?;
        u |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(((u >> 1) as i64) ^ -((u & 1) as i64));
        }
    }
    None
}

/// A length-prefixed field of `len` bytes ending by `limit`; -1 is null when
/// `nullable`.
#[inline(always)]
fn field(
    s: &mut impl Source,
    len: i32,
    nullable: bool,
    limit: usize,
) -> Result<Option<Range<usize>>, &'static str> {
    if len < 0 {
        return if len == -1 && nullable {
            Ok(None)
        } else {
            Err("negative length")
        };
    }
    s.skip(len as usize, limit)
        .map(Some)
        .ok_or("length past the record")
}

/// Reads the `index`th record, leaving the source at its end.
#[inline(always)]
fn read_record(s: &mut impl Source, index: usize) -> Result<RecordRef, StorageError> {
    let start = s.pos();
    let bad = |what: &str| invalid(index, start, what);
    let len = varint(s, usize::MAX).ok_or_else(|| bad("bad length varint"))?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| s.pos().checked_add(l))
        .filter(|e| !s.ends_before(*e))
        .ok_or_else(|| bad("length past the records"))?;
    // Attributes: no bits are defined for v2 records.
    s.byte(end).ok_or_else(|| bad("empty record"))?;
    let timestamp_delta = varlong(s, end).ok_or_else(|| bad("bad timestamp delta"))?;
    let offset_delta = varint(s, end).ok_or_else(|| bad("bad offset delta"))?;
    let key_len = varint(s, end).ok_or_else(|| bad("bad key length"))?;
    let key = field(s, key_len, true, end).map_err(|e| bad(&format!("key: {e}")))?;
    let value_len = varint(s, end).ok_or_else(|| bad("bad value length"))?;
    let value = field(s, value_len, true, end).map_err(|e| bad(&format!("value: {e}")))?;
    let headers = varint(s, end).ok_or_else(|| bad("bad header count"))?;
    let headers = usize::try_from(headers).map_err(|_| bad("negative header count"))?;
    let left = end.saturating_sub(s.pos());
    if headers > left / HEADER_BYTES_MIN {
        return Err(bad(&format!(
            "{headers} headers cannot fit the {left} bytes left in the record"
        )));
    }
    for h in 0..headers {
        let k = varint(s, end).ok_or_else(|| bad("bad header key length"))?;
        field(s, k, false, end).map_err(|e| bad(&format!("header {h} key: {e}")))?;
        let v = varint(s, end).ok_or_else(|| bad("bad header value length"))?;
        field(s, v, true, end).map_err(|e| bad(&format!("header {h} value: {e}")))?;
    }
    if s.pos() != end {
        return Err(bad(&format!(
            "{} bytes past the last field of the record",
            end - s.pos()
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

#[inline(always)]
fn walk(
    s: &mut impl Source,
    count: i32,
    mut f: impl FnMut(usize, &RecordRef) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let count = usize::try_from(count)
        .map_err(|_| StorageError::InvalidRecord(format!("negative record count {count}")))?;
    let mut index = 0usize;
    // Bounded by the bytes: every record takes at least two.
    while !s.at_end() {
        if index == count {
            return Err(invalid(
                index,
                s.pos(),
                &format!("the batch claims {count} records but more bytes follow them"),
            ));
        }
        let r = read_record(s, index)?;
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

/// Walks every record of a records section, which must hold exactly `count` records
/// and nothing after them; calls `f(index, record)` for each. Stops at the first
/// error (from the bytes or from `f`).
pub fn walk_records(
    raw: &[u8],
    count: i32,
    f: impl FnMut(usize, &RecordRef) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    walk(&mut SliceSource { b: raw, p: 0 }, count, f)
}

/// Per-thread state of the compressed walk, kept between batches (one per shard: a
/// walk never awaits, so no two share it): the window, and zstd's decoder context
/// (creating one per batch cost more than decompressing a small batch).
struct StreamScratch {
    window: Vec<u8>,
    zstd: Option<zstd::zstd_safe::DCtx<'static>>,
}

thread_local! {
    static STREAM_SCRATCH: std::cell::RefCell<StreamScratch> = const {
        std::cell::RefCell::new(StreamScratch { window: Vec::new(), zstd: None })
    };
}

/// `walk_records` over a compressed records section, decompressed through a window as
/// the walk goes (never held whole), refusing more than `max` decompressed bytes. A
/// stream that does not decompress, or passes `max`, is `CorruptBatch` whatever the
/// walker made of the bytes it got.
pub fn walk_compressed_records(
    codec: Codec,
    data: &[u8],
    count: i32,
    max: usize,
    f: impl FnMut(usize, &RecordRef) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    if codec == Codec::None {
        return walk_records(data, count, f);
    }
    STREAM_SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => walk_stream(codec, data, count, max, &mut scratch, f),
        // Not reentrant in practice; fresh state is correct anyway.
        Err(_) => walk_stream(
            codec,
            data,
            count,
            max,
            &mut StreamScratch {
                window: Vec::new(),
                zstd: None,
            },
            f,
        ),
    })
}

fn walk_stream(
    codec: Codec,
    data: &[u8],
    count: i32,
    max: usize,
    scratch: &mut StreamScratch,
    f: impl FnMut(usize, &RecordRef) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    fn run<R: Read>(
        r: R,
        window: &mut Vec<u8>,
        count: i32,
        max: usize,
        f: impl FnMut(usize, &RecordRef) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        window.resize(STREAM_WINDOW_BYTES, 0);
        let mut s = StreamSource::new(r, window, max);
        let walked = walk(&mut s, count, f);
        match s.error {
            Some(e) => Err(e),
            None => walked,
        }
    }
    let corrupt = |e: &dyn std::fmt::Display| StorageError::CorruptBatch(format!("zstd: {e}"));
    let window = &mut scratch.window;
    match codec {
        Codec::None => walk_records(data, count, f),
        Codec::Gzip => run(
            flate2::bufread::MultiGzDecoder::new(data),
            window,
            count,
            max,
            f,
        ),
        Codec::Lz4 => run(
            lz4_flex::frame::FrameDecoder::new(data),
            window,
            count,
            max,
            f,
        ),
        Codec::Zstd => {
            let ctx = match &mut scratch.zstd {
                Some(ctx) => ctx,
                None => {
                    let mut ctx = zstd::zstd_safe::DCtx::try_create()
                        .ok_or_else(|| corrupt(&"no decoder context"))?;
                    ctx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                        PRODUCE_ZSTD_WINDOW_LOG_MAX,
                    ))
                    .map_err(|code| corrupt(&zstd::zstd_safe::get_error_name(code)))?;
                    scratch.zstd.insert(ctx)
                }
            };
            run(
                zstd::stream::read::Decoder::with_context(data, ctx),
                window,
                count,
                max,
                f,
            )
        }
        // Raw snappy blocks do not stream: one block at a time, exactly sized.
        Codec::Snappy => run(SnappyReader::new(data, max), window, count, max, f),
    }
}

/// Java's xerial-framed snappy (or one raw block) as a `Read`: each block is
/// decompressed alone into a buffer of exactly its size, refused past `max`.
struct SnappyReader<'a> {
    data: &'a [u8],
    p: usize,
    block: Vec<u8>,
    at: usize,
    max: usize,
}

impl<'a> SnappyReader<'a> {
    fn new(data: &'a [u8], max: usize) -> Self {
        SnappyReader {
            data,
            p: 0,
            block: Vec::new(),
            at: 0,
            max,
        }
    }
}

impl Read for SnappyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Bounded by the blocks in `data`: each pass consumes one or returns.
        while self.at == self.block.len() {
            if self.p >= self.data.len() {
                return Ok(0);
            }
            let next = super::compact::snappy_next_block(self.data, &mut self.p)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.block.clear();
            self.at = 0;
            if let Some(block) = next {
                super::compact::snappy_block(block, &mut self.block, self.max)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Decompresses `data` into `out` (cleared first), failing past `max` bytes without
/// ever holding more than `max + 1`: the buffer grows by doubling, capped at the bound.
/// For stored batches whose records are needed (compaction, replay).
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
            let d = zstd::stream::read::Decoder::new(data).map_err(|e| corrupt("zstd", &e))?;
            read_bounded(d, out, max).map_err(|e| corrupt("zstd", &e))
        }
        Codec::Snappy => super::compact::snappy_decompress_into(data, out, max),
    }
}

fn read_bounded(mut r: impl Read, out: &mut Vec<u8>, max: usize) -> std::io::Result<()> {
    let mut filled = 0usize;
    // Bounded: the buffer never passes max + 1, and each pass fills some of it.
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
/// An uncompressed batch is walked in place; a compressed one through a window as it
/// decompresses (`walk_compressed_records`). Nothing is copied or kept.
///
/// Errors: `CorruptBatch` (CORRUPT_MESSAGE) when the bytes cannot be read at all (an
/// unknown codec, a stream that does not decompress or is too large), `InvalidRecord`
/// (INVALID_RECORD) for records that lie or break a rule.
pub fn validate_produced(
    header: &BatchHeader,
    batch: &[u8],
    rules: ProduceRules,
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
    let check = |i: usize, r: &RecordRef| {
        if usize::try_from(r.offset_delta) != Ok(i) {
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
    };
    if codec == Codec::None {
        walk_records(body, header.records_count, check)
    } else {
        walk_compressed_records(
            codec,
            body,
            header.records_count,
            PRODUCE_RECORDS_BYTES_MAX,
            check,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::batch::validate_batch;
    use crate::segment::compact::build_batch;
    use crate::segment::testing::{encode_batch, encode_keyed_batch, put_varint};

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
        validate_produced(&h, b, ProduceRules { compacted })
    }

    #[test]
    fn valid_batches_of_every_codec_pass() {
        for codec in Codec::ALL {
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
        for codec in Codec::ALL {
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
    fn a_produced_compression_bomb_is_corrupt_message_for_every_codec() {
        // One record claiming more than the bound (refused before decompressing it),
        // and well-formed 1 MiB records past the bound (streamed up to it).
        let one = record(Some(b"k"), &vec![0u8; PRODUCE_RECORDS_BYTES_MAX], 0, 0, 0);
        let mib = vec![0u8; 1 << 20];
        let n = (PRODUCE_RECORDS_BYTES_MAX >> 20) + 1;
        let many: Vec<u8> = (0..n)
            .flat_map(|i| record(Some(b"k"), &mib, 0, i as i64, 0))
            .collect();
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            for (raw, count) in [(&one, 1), (&many, n as i32)] {
                let b = batch_of(raw, count, codec);
                assert!(b.len() < raw.len() / 20, "{codec:?} compresses");
                let e = check(&b, false).unwrap_err();
                assert_eq!(e.kafka_error_code(), 2, "{codec:?} {count}: {e}");
            }
        }
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
