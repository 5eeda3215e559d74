//! Log compaction (`cleanup.policy=compact`): the pure part. Reads the records inside
//! v2 batches (decompressing gzip, xerial-framed snappy, LZ4 frames and zstd), decides
//! which survive, and re-encodes each batch with only its survivors.
//!
//! Offsets never move. Every output batch keeps its input batch's base offset, and each
//! surviving record keeps its bytes, offset delta included (records are copied as
//! opaque slices, never re-encoded). So a compacted segment is a subsequence of the
//! original in the same order: a reader can never meet a key's older value after a
//! newer one, and fetch positions stay valid.
//!
//! The offset ranges of a segment's batches stay dense (each batch starts right after
//! the previous one's last offset), which is what recovery and the index check: a
//! batch whose records all went is absorbed by raising the previous output batch's
//! `last_offset_delta` (KAFKA-5443: consumers continue after a batch's last offset, not
//! its last record), or, where there is no such batch or it belongs to an idempotent
//! producer (whose sequence arithmetic uses `last_offset_delta`), replaced by an empty
//! batch (no records, no producer) spanning the dropped range.

use std::collections::HashMap;
use std::io::Write;

use bytes::Bytes;

use super::batch::{validate_batch, BatchHeader, BATCH_HEADER_LEN, LOG_OVERHEAD};
use super::error::StorageError;

/// Codec bits of the batch attributes.
const ATTR_CODEC_MASK: i16 = 0x07;
// Control batches (transaction markers) carry no user keys: kept as they are.
use super::records::ATTR_CONTROL;
/// Decompressed records of one batch above this are refused: bounds the memory a
/// compression bomb could take.
pub(crate) const RECORDS_BYTES_MAX: usize = 256 << 20;
/// xerial snappy-java stream header (what Java and librdkafka clients write).
const SNAPPY_XERIAL_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
const SNAPPY_BLOCK_BYTES: usize = 32 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    /// Every codec Kafka clients use.
    pub const ALL: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];

    pub fn from_attributes(attributes: i16) -> Result<Codec, StorageError> {
        Ok(match attributes & ATTR_CODEC_MASK {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            c => return Err(StorageError::InvalidBatch(format!("unknown codec {c}"))),
        })
    }

    fn bits(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }
}

fn corrupt(what: impl Into<String>) -> StorageError {
    StorageError::CorruptBatch(what.into())
}

pub fn decompress(codec: Codec, data: &[u8]) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    super::records::decompress_bounded(codec, data, &mut out, RECORDS_BYTES_MAX)?;
    Ok(out)
}

/// Appends one raw snappy block's output to `out`, failing if `out` would pass `max`.
pub(crate) fn snappy_block(
    block: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), StorageError> {
    let n = snap::raw::decompress_len(block).map_err(|e| corrupt(format!("snappy: {e}")))?;
    if out.len().saturating_add(n) > max {
        return Err(corrupt(format!("snappy: records exceed {max} bytes")));
    }
    let at = out.len();
    // Exact: amortized growth could double the buffer past the bound.
    out.reserve_exact(n);
    out.resize(at + n, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[at..])
        .map_err(|e| corrupt(format!("snappy: {e}")))?;
    Ok(())
}

/// The next compressed block of a snappy records section at `*p` (advanced past it):
/// Java's snappy-java stream (xerial framing: a 16-byte header, then blocks of
/// `u32 length + raw snappy`; concatenated streams repeat the header, for which this
/// returns `None`), or plain raw snappy (one block) when the header is absent.
pub(crate) fn snappy_next_block<'a>(
    data: &'a [u8],
    p: &mut usize,
) -> Result<Option<&'a [u8]>, StorageError> {
    if *p == 0 && !data.starts_with(SNAPPY_XERIAL_MAGIC) {
        *p = data.len();
        return Ok(Some(data));
    }
    let rest = data.get(*p..).unwrap_or_default();
    if rest.starts_with(SNAPPY_XERIAL_MAGIC) {
        *p += SNAPPY_XERIAL_MAGIC.len();
        return Ok(None);
    }
    let len = rest
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt("snappy: truncated block length"))? as usize;
    let block = rest
        .get(4..)
        .and_then(|b| b.get(..len))
        .ok_or_else(|| corrupt("snappy: truncated block"))?;
    *p += 4 + len;
    Ok(Some(block))
}

/// A snappy records section (`snappy_next_block`) appended to `out` up to `max` bytes.
pub(crate) fn snappy_decompress_into(
    data: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), StorageError> {
    let mut p = 0;
    // Bounded: every pass moves `p` forward by at least 4 bytes.
    while p < data.len() {
        if let Some(block) = snappy_next_block(data, &mut p)? {
            snappy_block(block, out, max)?;
        }
    }
    Ok(())
}

pub fn compress(codec: Codec, raw: &[u8]) -> Result<Vec<u8>, StorageError> {
    let io = |e: std::io::Error| StorageError::io("compress", "(memory)", e);
    match codec {
        Codec::None => Ok(raw.to_vec()),
        Codec::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(raw).map_err(io)?;
            e.finish().map_err(io)
        }
        Codec::Lz4 => {
            // Independent 64 KiB blocks, no content size: the subset Kafka's Java
            // KafkaLZ4BlockInputStream reads.
            let info = lz4_flex::frame::FrameInfo::new()
                .block_mode(lz4_flex::frame::BlockMode::Independent)
                .block_size(lz4_flex::frame::BlockSize::Max64KB);
            let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            e.write_all(raw).map_err(io)?;
            e.finish()
                .map_err(|e| io(std::io::Error::other(e.to_string())))
        }
        Codec::Zstd => zstd::bulk::compress(raw, 3).map_err(io),
        Codec::Snappy => {
            let mut out = SNAPPY_XERIAL_MAGIC.to_vec();
            let mut enc = snap::raw::Encoder::new();
            for chunk in raw.chunks(SNAPPY_BLOCK_BYTES) {
                let block = enc
                    .compress_vec(chunk)
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            Ok(out)
        }
    }
}

/// One record inside a batch's (decompressed) records, as ranges into them; a null
/// value (`value: None`) is a tombstone.
pub use super::records::RecordRef;

/// Walks the records of one batch (`records::walk_records`: every length checked, the
/// records exactly fill `raw` and number `count`).
pub fn parse_records(raw: &[u8], count: i32) -> Result<Vec<RecordRef>, StorageError> {
    // The header's count is a claim: each record takes at least 7 bytes (one per
    // varint field), so the bytes bound what is reserved.
    let claimed = usize::try_from(count).unwrap_or(0);
    let mut out = Vec::with_capacity(claimed.min(raw.len() / 7).min(1 << 16));
    super::records::walk_records(raw, count, |_, r| {
        out.push(r.clone());
        Ok(())
    })?;
    Ok(out)
}

/// A batch's header and its records, decompressed.
pub struct DecodedBatch {
    pub header: BatchHeader,
    pub codec: Codec,
    pub records: Vec<u8>,
    pub refs: Vec<RecordRef>,
}

impl DecodedBatch {
    pub fn is_control(&self) -> bool {
        self.header.attributes & ATTR_CONTROL != 0
    }

    pub fn offset(&self, r: &RecordRef) -> i64 {
        self.header.base_offset + i64::from(r.offset_delta)
    }

    pub fn timestamp(&self, r: &RecordRef) -> i64 {
        if self.header.is_log_append_time() {
            self.header.max_timestamp
        } else {
            self.header.base_timestamp.saturating_add(r.timestamp_delta)
        }
    }

    pub fn key(&self, r: &RecordRef) -> Option<&[u8]> {
        r.key.clone().map(|k| &self.records[k])
    }
}

pub fn decode_batch(batch: &[u8]) -> Result<DecodedBatch, StorageError> {
    let header = validate_batch(batch)?;
    let codec = Codec::from_attributes(header.attributes)?;
    let records = decompress(codec, &batch[BATCH_HEADER_LEN..])?;
    let refs = parse_records(&records, header.records_count)?;
    Ok(DecodedBatch {
        header,
        codec,
        records,
        refs,
    })
}

/// Encodes a v2 batch from `template`'s header fields with the given records (already
/// framed, uncompressed), count and last offset delta; the CRC is computed.
pub fn build_batch(
    template: &BatchHeader,
    codec: Codec,
    base_offset: i64,
    last_offset_delta: i32,
    records: &[u8],
    count: i32,
    producer: Option<(i64, i16, i32)>,
) -> Result<Vec<u8>, StorageError> {
    let body = compress(codec, records)?;
    let attributes = (template.attributes & !ATTR_CODEC_MASK) | codec.bits();
    let (pid, epoch, seq) = producer.unwrap_or((-1, -1, -1));
    let mut b = Vec::with_capacity(BATCH_HEADER_LEN + body.len());
    b.extend_from_slice(&base_offset.to_be_bytes());
    let batch_length = i32::try_from(BATCH_HEADER_LEN - LOG_OVERHEAD + body.len())
        .map_err(|_| corrupt("compacted batch over 2 GiB"))?;
    b.extend_from_slice(&batch_length.to_be_bytes());
    b.extend_from_slice(&template.partition_leader_epoch.to_be_bytes());
    b.push(2); // magic
    b.extend_from_slice(&[0; 4]); // crc, below
    b.extend_from_slice(&attributes.to_be_bytes());
    b.extend_from_slice(&last_offset_delta.to_be_bytes());
    b.extend_from_slice(&template.base_timestamp.to_be_bytes());
    b.extend_from_slice(&template.max_timestamp.to_be_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&count.to_be_bytes());
    debug_assert_eq!(b.len(), BATCH_HEADER_LEN);
    b.extend_from_slice(&body);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(b)
}

/// Sets a finished batch's `last_offset_delta` and recomputes its CRC.
fn set_last_offset_delta(batch: &mut [u8], delta: i32) {
    batch[23..27].copy_from_slice(&delta.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Estimated memory of one map entry besides its key bytes: the `Bytes` handle, the
/// offset and the hash table's slot and slack.
pub const OFFSET_MAP_ENTRY_BYTES: usize = 64;

/// Keys → offset of their newest record, built from the part of the log being cleaned.
/// Its memory is bounded like Kafka's dedupe buffer: once `bytes()` reaches the bound
/// the caller stops adding (at a batch boundary) and cleans only up to there.
#[derive(Default)]
pub struct OffsetMap {
    latest: HashMap<Bytes, i64>,
    bytes: usize,
}

impl OffsetMap {
    pub fn add_batch(&mut self, b: &DecodedBatch) {
        if b.is_control() {
            return;
        }
        for r in &b.refs {
            if let Some(k) = b.key(r) {
                let off = b.offset(r);
                match self.latest.get_mut(k) {
                    Some(o) => *o = (*o).max(off),
                    None => {
                        self.bytes += k.len() + OFFSET_MAP_ENTRY_BYTES;
                        self.latest.insert(Bytes::copy_from_slice(k), off);
                    }
                }
            }
        }
    }

    /// Estimated memory held by the keys and their entries.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn latest(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// What survives compaction.
pub struct Retain<'a> {
    pub map: &'a OffsetMap,
    /// First offset the map did not see: records from here on are all kept (the map
    /// cannot tell whether a later record supersedes them, and a tombstone there may
    /// still hide older values of its key that this pass keeps).
    pub mapped_end: i64,
    /// Tombstones with a timestamp below this are removed (now - delete.retention.ms).
    pub tombstone_horizon_ms: i64,
}

impl Retain<'_> {
    fn keeps(&self, b: &DecodedBatch, r: &RecordRef) -> bool {
        let Some(key) = b.key(r) else {
            return true; // unkeyed records cannot be compacted
        };
        let off = b.offset(r);
        if off >= self.mapped_end {
            return true;
        }
        if self.map.latest(key).is_some_and(|latest| latest > off) {
            return false;
        }
        !(r.value.is_none() && b.timestamp(r) < self.tombstone_horizon_ms)
    }
}

struct Out {
    bytes: Vec<u8>,
    base_offset: i64,
    last_offset: i64,
    /// May absorb following dropped batches (no producer sequence to keep).
    extensible: bool,
}

/// Compacts one segment's batches as they stream by (dense, in offset order); emits
/// output batches covering the same offset range densely. The last output batch is
/// held back until the next kept batch (or `finish`), since dropped batches after it
/// may still widen it.
pub struct SegmentCompactor {
    expected: i64,
    held: Option<Out>,
    /// Start of a dropped range not yet covered by any output batch.
    gap: Option<(i64, BatchHeader)>,
    changed: bool,
}

impl SegmentCompactor {
    pub fn new(base_offset: i64) -> SegmentCompactor {
        SegmentCompactor {
            expected: base_offset,
            held: None,
            gap: None,
            changed: false,
        }
    }

    /// Whether anything was removed so far.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Takes the next input batch; appends finished output batches to `emit`.
    pub fn push(
        &mut self,
        raw: &[u8],
        retain: &Retain<'_>,
        emit: &mut Vec<Bytes>,
    ) -> Result<(), StorageError> {
        let d = decode_batch(raw)?;
        let h = d.header;
        if h.base_offset != self.expected {
            return Err(corrupt(format!(
                "batch at offset {} where {} was expected",
                h.base_offset, self.expected
            )));
        }
        self.expected = h.last_offset() + 1;
        let keep: Vec<&RecordRef> = if d.is_control() {
            d.refs.iter().collect()
        } else {
            d.refs.iter().filter(|r| retain.keeps(&d, r)).collect()
        };
        if keep.is_empty() {
            // An empty input batch (from an earlier pass) alone changes nothing.
            self.changed |= !d.refs.is_empty();
            match self.held.as_mut() {
                Some(prev) if self.gap.is_none() && prev.extensible => {
                    prev.last_offset = h.last_offset();
                }
                _ => {
                    self.gap.get_or_insert((h.base_offset, h));
                }
            }
            return Ok(());
        }
        if let Some(prev) = self.held.take() {
            emit.push(prev.finish());
        }
        if let Some((from, template)) = self.gap.take() {
            emit.push(empty_batch(&template, from, h.base_offset - 1)?.finish());
        }
        let producer =
            (h.producer_id >= 0).then_some((h.producer_id, h.producer_epoch, h.base_sequence));
        let bytes = if keep.len() == d.refs.len() {
            raw.to_vec()
        } else {
            self.changed = true;
            let mut records = Vec::new();
            for r in &keep {
                records.extend_from_slice(&d.records[r.bytes.clone()]);
            }
            build_batch(
                &h,
                d.codec,
                h.base_offset,
                h.last_offset_delta,
                &records,
                keep.len() as i32,
                producer,
            )?
        };
        self.held = Some(Out {
            bytes,
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
            extensible: producer.is_none() && !d.is_control(),
        });
        Ok(())
    }

    /// Ends the segment at `end` (its next offset); emits what is held back.
    pub fn finish(mut self, end: i64, emit: &mut Vec<Bytes>) -> Result<(), StorageError> {
        if self.expected != end {
            return Err(corrupt(format!(
                "segment batches end at {}, the segment at {end}",
                self.expected
            )));
        }
        if let Some(prev) = self.held.take() {
            emit.push(prev.finish());
        }
        if let Some((from, template)) = self.gap.take() {
            emit.push(empty_batch(&template, from, end - 1)?.finish());
        }
        Ok(())
    }
}

impl Out {
    /// The batch bytes with `last_offset_delta` widened if dropped batches were absorbed.
    fn finish(mut self) -> Bytes {
        let delta = self.last_offset - self.base_offset;
        let cur = i64::from(i32::from_be_bytes(
            self.bytes[23..27].try_into().expect("4 bytes"),
        ));
        if cur != delta {
            // Within one segment: offsets span far less than 2^31.
            set_last_offset_delta(&mut self.bytes, delta as i32);
        }
        Bytes::from(self.bytes)
    }
}

/// Compacts a whole segment's batches in memory. `None` when nothing would be removed.
pub fn compact_batches(
    batches: &[Bytes],
    end: i64,
    retain: &Retain<'_>,
) -> Result<Option<Vec<Bytes>>, StorageError> {
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    let mut c = SegmentCompactor::new(BatchHeader::parse(first)?.base_offset);
    let mut out = Vec::new();
    for b in batches {
        c.push(b, retain, &mut out)?;
    }
    let changed = c.changed();
    c.finish(end, &mut out)?;
    Ok(changed.then_some(out))
}

/// A batch without records spanning `[from, to]`: keeps the offsets of dropped batches
/// accounted for. No producer (it carries no sequence numbers).
fn empty_batch(template: &BatchHeader, from: i64, to: i64) -> Result<Out, StorageError> {
    let delta = i32::try_from(to - from).map_err(|_| corrupt("dropped range over 2^31 offsets"))?;
    let bytes = build_batch(template, Codec::None, from, delta, &[], 0, None)?;
    Ok(Out {
        bytes,
        base_offset: from,
        last_offset: to,
        extensible: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::testing::encode_keyed_batch;

    fn kv(k: &str, v: Option<&str>) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        (
            Some(k.as_bytes().to_vec()),
            v.map(|v| v.as_bytes().to_vec()),
        )
    }

    fn map_of(batches: &[Bytes]) -> OffsetMap {
        let mut m = OffsetMap::default();
        for b in batches {
            m.add_batch(&decode_batch(b).unwrap());
        }
        m
    }

    /// (offset, key, value) of every record, in order.
    fn records(batches: &[Bytes]) -> Vec<(i64, Option<Vec<u8>>, bool)> {
        let mut out = Vec::new();
        for b in batches {
            let d = decode_batch(b).unwrap();
            for r in &d.refs {
                out.push((d.offset(r), d.key(r).map(<[u8]>::to_vec), r.value.is_none()));
            }
        }
        out
    }

    #[test]
    fn every_codec_round_trips() {
        let raw: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ] {
            let c = compress(codec, &raw).unwrap();
            assert_eq!(decompress(codec, &c).unwrap(), raw, "{codec:?}");
        }
        assert!(decompress(Codec::Gzip, b"not gzip").is_err());
        assert!(decompress(Codec::Snappy, SNAPPY_XERIAL_MAGIC.as_slice())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn only_the_last_record_per_key_survives_with_its_offset() {
        let a = encode_keyed_batch(0, 0, &[kv("a", Some("1")), kv("b", Some("1"))], Codec::Lz4);
        let b = encode_keyed_batch(
            2,
            0,
            &[kv("a", Some("2")), kv("c", Some("1"))],
            Codec::Snappy,
        );
        let batches = vec![a, b];
        let map = map_of(&batches);
        let retain = Retain {
            map: &map,
            mapped_end: i64::MAX,
            tombstone_horizon_ms: i64::MIN,
        };
        let out = compact_batches(&batches, 4, &retain).unwrap().unwrap();
        let got = records(&out);
        assert_eq!(
            got.iter()
                .map(|(o, k, _)| (*o, k.clone().unwrap()))
                .collect::<Vec<_>>(),
            vec![(1, b"b".to_vec()), (2, b"a".to_vec()), (3, b"c".to_vec())]
        );
        // Batches keep their base offsets and ranges: dense for recovery.
        let h: Vec<_> = out.iter().map(|b| validate_batch(b).unwrap()).collect();
        assert_eq!((h[0].base_offset, h[0].last_offset()), (0, 1));
        assert_eq!((h[1].base_offset, h[1].last_offset()), (2, 3));
        // The second batch lost nothing: it is kept byte for byte.
        assert_eq!(out[1], batches[1]);
        // Nothing left to remove: a second pass changes nothing.
        assert!(compact_batches(&out, 4, &retain).unwrap().is_none());
    }

    #[test]
    fn dropped_batches_are_absorbed_and_leading_ones_become_an_empty_batch() {
        let bs: Vec<Bytes> = (0..4)
            .map(|i| {
                encode_keyed_batch(
                    i * 2,
                    0,
                    &[kv("k", Some("v")), kv("k", Some("w"))],
                    Codec::None,
                )
            })
            .collect();
        let mut all = bs.clone();
        all.push(encode_keyed_batch(
            8,
            0,
            &[kv("z", Some("last"))],
            Codec::Zstd,
        ));
        all.push(encode_keyed_batch(9, 0, &[kv("z", Some("x"))], Codec::None));
        // Both keys are newer further on (another segment): everything here goes.
        let mut map = OffsetMap::default();
        map.latest.insert(Bytes::from_static(b"k"), 100);
        map.latest.insert(Bytes::from_static(b"z"), 100);
        let retain = Retain {
            map: &map,
            mapped_end: i64::MAX,
            tombstone_horizon_ms: i64::MIN,
        };
        let out = compact_batches(&all, 10, &retain).unwrap().unwrap();
        assert_eq!(out.len(), 1);
        let h = validate_batch(&out[0]).unwrap();
        assert_eq!((h.base_offset, h.last_offset(), h.records_count), (0, 9, 0));

        // "k" newest at 3: batch 0 becomes an empty batch, batch 1 keeps offset 3, the
        // later "k" records stay, and the dropped "z" batches widen the batch before.
        map.latest.insert(Bytes::from_static(b"k"), 3);
        let retain = Retain {
            map: &map,
            mapped_end: i64::MAX,
            tombstone_horizon_ms: i64::MIN,
        };
        let out = compact_batches(&all, 10, &retain).unwrap().unwrap();
        let h: Vec<_> = out.iter().map(|b| validate_batch(b).unwrap()).collect();
        assert_eq!(
            h.iter()
                .map(|h| (h.base_offset, h.last_offset(), h.records_count))
                .collect::<Vec<_>>(),
            vec![(0, 1, 0), (2, 3, 1), (4, 5, 2), (6, 9, 2)]
        );
        assert_eq!(
            records(&out).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![3, 4, 5, 6, 7]
        );
    }

    #[test]
    fn records_past_the_mapped_end_are_all_kept() {
        // Offsets 0..3: a=1, a=2, b=tombstone, a=3. The map saw only 0..2.
        let batches = vec![encode_keyed_batch(
            0,
            1_000,
            &[
                kv("a", Some("1")),
                kv("a", Some("2")),
                kv("b", None),
                kv("a", Some("3")),
            ],
            Codec::None,
        )];
        let mut map = OffsetMap::default();
        map.add_batch(
            &decode_batch(&encode_keyed_batch(
                0,
                1_000,
                &[kv("a", Some("1")), kv("a", Some("2"))],
                Codec::None,
            ))
            .unwrap(),
        );
        let retain = Retain {
            map: &map,
            mapped_end: 2,
            tombstone_horizon_ms: i64::MAX,
        };
        let out = compact_batches(&batches, 4, &retain).unwrap().unwrap();
        let kept: Vec<i64> = records(&out).iter().map(|r| r.0).collect();
        // Only a=1 goes (a=2 supersedes it within the map); the unmapped tombstone and
        // a=3 stay, and a=2 stays since the map does not know a=3.
        assert_eq!(kept, vec![1, 2, 3]);
        assert!(map.bytes() >= 1 + OFFSET_MAP_ENTRY_BYTES);
    }

    #[test]
    fn tombstones_go_only_after_the_horizon() {
        let a = encode_keyed_batch(0, 1_000, &[kv("a", Some("1")), kv("a", None)], Codec::Gzip);
        let batches = vec![a];
        let map = map_of(&batches);
        let keep = Retain {
            map: &map,
            mapped_end: i64::MAX,
            tombstone_horizon_ms: 500,
        };
        let out = compact_batches(&batches, 2, &keep).unwrap().unwrap();
        assert_eq!(records(&out), vec![(1, Some(b"a".to_vec()), true)]);
        let drop = Retain {
            map: &map,
            mapped_end: i64::MAX,
            tombstone_horizon_ms: 5_000,
        };
        let out = compact_batches(&batches, 2, &drop).unwrap().unwrap();
        assert!(records(&out).is_empty());
        assert_eq!(validate_batch(&out[0]).unwrap().last_offset(), 1);
    }

    #[test]
    fn idempotent_batches_keep_their_sequence_range() {
        let mut a =
            encode_keyed_batch(0, 0, &[kv("a", Some("1")), kv("b", Some("1"))], Codec::None)
                .to_vec();
        // producer id 7, epoch 0, base sequence 0
        a[43..51].copy_from_slice(&7i64.to_be_bytes());
        a[51..53].copy_from_slice(&0i16.to_be_bytes());
        a[53..57].copy_from_slice(&0i32.to_be_bytes());
        let crc = crc32c::crc32c(&a[21..]);
        a[17..21].copy_from_slice(&crc.to_be_bytes());
        let batches = vec![
            Bytes::from(a),
            encode_keyed_batch(2, 0, &[kv("c", Some("1"))], Codec::None),
            encode_keyed_batch(3, 0, &[kv("a", Some("2")), kv("c", Some("2"))], Codec::None),
            encode_keyed_batch(5, 0, &[kv("c", Some("3"))], Codec::None),
        ];
        let mut map = map_of(&batches);
        map.latest.insert(Bytes::from_static(b"c"), 9);
        let retain = Retain {
            map: &map,
            mapped_end: i64::MAX,
            tombstone_horizon_ms: i64::MIN,
        };
        let out = compact_batches(&batches, 6, &retain).unwrap().unwrap();
        let h: Vec<_> = out.iter().map(|b| validate_batch(b).unwrap()).collect();
        // The producer's batch keeps delta 1 (its sequences 0..=1) and absorbs nothing:
        // the dropped batch after it becomes an empty batch; the last dropped batch is
        // absorbed by the producer-less batch before it.
        assert_eq!(
            h.iter()
                .map(|h| (h.base_offset, h.last_offset(), h.producer_id))
                .collect::<Vec<_>>(),
            vec![(0, 1, 7), (2, 2, -1), (3, 5, -1)]
        );
        assert_eq!(
            records(&out).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 3]
        );
    }

    #[test]
    fn kafka_protocol_decodes_compacted_and_empty_batches() {
        let batches: Vec<Bytes> = (0..3)
            .map(|i| {
                encode_keyed_batch(
                    i * 2,
                    0,
                    &[kv("a", Some("1")), kv("b", Some("2"))],
                    Codec::None,
                )
            })
            .collect();
        let mut map = map_of(&batches);
        map.latest.insert(Bytes::from_static(b"b"), 99);
        let retain = Retain {
            map: &map,
            mapped_end: i64::MAX,
            tombstone_horizon_ms: i64::MIN,
        };
        let out = compact_batches(&batches, 6, &retain).unwrap().unwrap();
        let mut decoded = Vec::new();
        for b in &out {
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut b.clone()).unwrap();
            decoded.extend(set.records.into_iter().map(|r| (r.offset, r.key.unwrap())));
        }
        assert_eq!(decoded, vec![(4, Bytes::from_static(b"a"))]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any log of keyed records, cut into batches of any codec: exactly each key's
        /// last record survives, at its offset, in order, and the batches still cover
        /// every offset of the segment exactly once.
        #[test]
        fn compaction_keeps_exactly_each_keys_last_record(
            recs in proptest::collection::vec((0u8..8, proptest::option::of(0u8..255)), 1..120),
            cuts in proptest::collection::vec(1usize..12, 1..40),
            codecs in proptest::collection::vec(0usize..5, 1..40),
            base in 0i64..1_000_000,
        ) {
            let all = [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd];
            let mut batches = Vec::new();
            let (mut i, mut n) = (0usize, 0usize);
            while i < recs.len() {
                let len = cuts[n % cuts.len()].min(recs.len() - i);
                let chunk: Vec<_> = recs[i..i + len]
                    .iter()
                    .map(|(k, v)| (Some(vec![*k]), v.map(|v| vec![v])))
                    .collect();
                batches.push(encode_keyed_batch(base + i as i64, 0, &chunk, all[codecs[n % codecs.len()]]));
                i += len;
                n += 1;
            }
            let end = base + recs.len() as i64;
            let map = map_of(&batches);
            let retain = Retain { map: &map, mapped_end: i64::MAX, tombstone_horizon_ms: i64::MIN };
            let out = compact_batches(&batches, end, &retain).unwrap().unwrap_or(batches.clone());
            let mut last = HashMap::new();
            for (i, (k, _)) in recs.iter().enumerate() {
                last.insert(*k, i);
            }
            let want: Vec<(i64, Option<Vec<u8>>, bool)> = recs
                .iter()
                .enumerate()
                .filter(|(i, (k, _))| last[k] == *i)
                .map(|(i, (k, v))| (base + i as i64, Some(vec![*k]), v.is_none()))
                .collect();
            proptest::prop_assert_eq!(records(&out), want);
            let mut next = base;
            for b in &out {
                let h = validate_batch(b).unwrap();
                proptest::prop_assert_eq!(h.base_offset, next);
                next = h.last_offset() + 1;
            }
            proptest::prop_assert_eq!(next, end);
            // Idempotent: compacting the output again removes nothing.
            proptest::prop_assert!(compact_batches(&out, end, &retain).unwrap().is_none());
        }
    }
}
