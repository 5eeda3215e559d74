//! Kafka v2 record batches (KIP-98 format) as opaque byte ranges: parse the fixed
//! 61-byte header, check length / magic / CRC32C, patch the base offset (and the max
//! timestamp for LogAppendTime). Records are never decoded here.
//!
//! Layout (big-endian), offsets in bytes:
//! ```text
//!  0 base_offset i64        8 batch_length i32 (bytes after this field)
//! 12 partition_leader_epoch 16 magic i8    17 crc u32 (CRC-32C of 21..end)
//! 21 attributes i16        23 last_offset_delta i32   27 base_timestamp i64
//! 35 max_timestamp i64     43 producer_id i64         51 producer_epoch i16
//! 53 base_sequence i32     57 records_count i32       61 records...
//! ```

use bytes::{Bytes, BytesMut};

use super::error::StorageError;

pub const BATCH_HEADER_LEN: usize = 61;
/// base_offset + batch_length: the part of a batch not counted by batch_length.
pub const LOG_OVERHEAD: usize = 12;
pub const MAGIC_V2: i8 = 2;
/// Attribute bit 3: timestamps are the broker's append time.
pub const ATTR_LOG_APPEND_TIME: i16 = 0x08;

const OFF_BASE_OFFSET: usize = 0;
const OFF_LENGTH: usize = 8;
const OFF_LEADER_EPOCH: usize = 12;
const OFF_MAGIC: usize = 16;
const OFF_CRC: usize = 17;
const OFF_ATTRIBUTES: usize = 21;
const OFF_LAST_OFFSET_DELTA: usize = 23;
const OFF_BASE_TIMESTAMP: usize = 27;
const OFF_MAX_TIMESTAMP: usize = 35;
const OFF_PRODUCER_ID: usize = 43;
const OFF_PRODUCER_EPOCH: usize = 51;
const OFF_BASE_SEQUENCE: usize = 53;
const OFF_RECORDS_COUNT: usize = 57;
const _: () = assert!(OFF_RECORDS_COUNT + 4 == BATCH_HEADER_LEN);
const _: () = assert!(OFF_CRC + 4 == OFF_ATTRIBUTES);

/// A batch that passed `validate_batch` (length, magic, CRC32C): proof carried in the
/// type, so appending it does not check the CRC a second time.
#[derive(Clone, Debug)]
pub struct ValidBatch {
    bytes: Bytes,
    header: BatchHeader,
}

impl ValidBatch {
    pub fn new(bytes: Bytes) -> Result<ValidBatch, StorageError> {
        let header = validate_batch(&bytes)?;
        Ok(ValidBatch { bytes, header })
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }
}

/// The decoded fixed header of one v2 batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}

impl BatchHeader {
    /// Decodes the header fields without any checks beyond `b.len() >= 61`.
    pub fn parse(b: &[u8]) -> Result<BatchHeader, StorageError> {
        if b.len() < BATCH_HEADER_LEN {
            return Err(StorageError::CorruptBatch(format!(
                "{} bytes is shorter than a batch header ({BATCH_HEADER_LEN})",
                b.len()
            )));
        }
        Ok(BatchHeader {
            base_offset: be_i64(b, OFF_BASE_OFFSET),
            batch_length: be_i32(b, OFF_LENGTH),
            partition_leader_epoch: be_i32(b, OFF_LEADER_EPOCH),
            magic: b[OFF_MAGIC] as i8,
            crc: u32::from_be_bytes(b[OFF_CRC..OFF_CRC + 4].try_into().expect("4-byte slice")),
            attributes: be_i16(b, OFF_ATTRIBUTES),
            last_offset_delta: be_i32(b, OFF_LAST_OFFSET_DELTA),
            base_timestamp: be_i64(b, OFF_BASE_TIMESTAMP),
            max_timestamp: be_i64(b, OFF_MAX_TIMESTAMP),
            producer_id: be_i64(b, OFF_PRODUCER_ID),
            producer_epoch: be_i16(b, OFF_PRODUCER_EPOCH),
            base_sequence: be_i32(b, OFF_BASE_SEQUENCE),
            records_count: be_i32(b, OFF_RECORDS_COUNT),
        })
    }

    /// Total bytes of the batch on the wire / on disk.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    /// Saturating: headers read back from disk may be garbage; never overflow on them.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }
}

/// Reads just the total length a batch claims (12 + batch_length), if 12 bytes exist.
pub fn claimed_len(b: &[u8]) -> Option<i64> {
    if b.len() < LOG_OVERHEAD {
        return None;
    }
    Some(LOG_OVERHEAD as i64 + i64::from(be_i32(b, OFF_LENGTH)))
}

/// Splits a produce request's `records` bytes into individual batches (zero-copy
/// slices of `records`), checking each length field. A length that points past the
/// end, or is too short for a header, refuses the whole set: nothing is appended.
pub fn split_batches(records: &Bytes) -> Result<Vec<Bytes>, StorageError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < records.len() {
        let rest = &records[pos..];
        let Some(len) = claimed_len(rest) else {
            return Err(StorageError::CorruptBatch(format!(
                "{} trailing bytes at position {pos} are not a batch",
                rest.len()
            )));
        };
        if len < BATCH_HEADER_LEN as i64 {
            return Err(StorageError::CorruptBatch(format!(
                "batch at position {pos} claims {len} bytes, less than a header"
            )));
        }
        if len > rest.len() as i64 {
            return Err(StorageError::CorruptBatch(format!(
                "batch at position {pos} claims {len} bytes but only {} remain",
                rest.len()
            )));
        }
        let len = len as usize;
        out.push(records.slice(pos..pos + len));
        pos += len;
    }
    Ok(out)
}

/// CRC-32C over attributes..end of a header+body that may live in two buffers.
pub fn compute_crc(header: &[u8], body: &[u8]) -> u32 {
    debug_assert!(header.len() >= BATCH_HEADER_LEN);
    crc32c::crc32c_append(crc32c::crc32c(&header[OFF_ATTRIBUTES..]), body)
}

/// Checks that `batch` is exactly one well-formed v2 batch: the length field matches
/// the slice, magic is 2, the CRC32C over attributes..end matches, and the offset
/// delta / count fields are not negative.
pub fn validate_batch(batch: &[u8]) -> Result<BatchHeader, StorageError> {
    if batch.len() <= OFF_MAGIC {
        return Err(StorageError::CorruptBatch(format!(
            "{} bytes is not a batch",
            batch.len()
        )));
    }
    let magic = batch[OFF_MAGIC] as i8;
    if magic != MAGIC_V2 {
        return Err(StorageError::InvalidBatch(format!(
            "magic {magic}, only v2 batches are accepted"
        )));
    }
    let header = BatchHeader::parse(batch)?;
    let claimed = LOG_OVERHEAD as i64 + i64::from(header.batch_length);
    if claimed != batch.len() as i64 {
        return Err(StorageError::CorruptBatch(format!(
            "batch length field says {claimed} bytes, batch has {}",
            batch.len()
        )));
    }
    let crc = crc32c::crc32c(&batch[OFF_ATTRIBUTES..]);
    if crc != header.crc {
        return Err(StorageError::CorruptBatch(format!(
            "CRC32C mismatch: header {:#010x}, computed {crc:#010x}",
            header.crc
        )));
    }
    if header.last_offset_delta < 0 || header.records_count < 0 {
        return Err(StorageError::InvalidBatch(format!(
            "negative last_offset_delta {} or records_count {}",
            header.last_offset_delta, header.records_count
        )));
    }
    Ok(header)
}

/// A batch with its offsets assigned: the patched 61-byte header is a fresh small
/// buffer, the records are the caller's bytes untouched (no copy of record bytes).
#[derive(Clone, Debug)]
pub struct PatchedBatch {
    pub header: Bytes,
    pub body: Bytes,
}

impl PatchedBatch {
    pub fn len(&self) -> usize {
        self.header.len() + self.body.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sets the base offset (outside the CRC, so the CRC stays valid). With
/// `log_append_time_ms = Some(now)` also sets the LogAppendTime attribute and the max
/// timestamp (Kafka's broker-side timestamp rewrite) and recomputes the CRC.
pub fn patch_batch(
    batch: &Bytes,
    base_offset: i64,
    log_append_time_ms: Option<i64>,
) -> PatchedBatch {
    let epoch = be_i32(batch, OFF_LEADER_EPOCH);
    patch_batch_with_epoch(batch, base_offset, epoch, log_append_time_ms)
}

/// `patch_batch` that also stamps the partition leader epoch (outside the CRC, a
/// 4-byte write like the base offset): what a leader does to every produced batch.
pub fn patch_batch_with_epoch(
    batch: &Bytes,
    base_offset: i64,
    leader_epoch: i32,
    log_append_time_ms: Option<i64>,
) -> PatchedBatch {
    assert!(
        batch.len() >= BATCH_HEADER_LEN,
        "patch_batch on an unvalidated batch"
    );
    let mut header = BytesMut::from(&batch[..BATCH_HEADER_LEN]);
    header[OFF_BASE_OFFSET..OFF_BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    header[OFF_LEADER_EPOCH..OFF_LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.to_be_bytes());
    let body = batch.slice(BATCH_HEADER_LEN..);
    if let Some(now) = log_append_time_ms {
        let attributes = be_i16(&header, OFF_ATTRIBUTES) | ATTR_LOG_APPEND_TIME;
        header[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        header[OFF_MAX_TIMESTAMP..OFF_MAX_TIMESTAMP + 8].copy_from_slice(&now.to_be_bytes());
        let crc = compute_crc(&header, &body);
        header[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    }
    PatchedBatch {
        header: header.freeze(),
        body,
    }
}

/// Sets the partition leader epoch in a header (outside the CRC).
pub fn set_partition_leader_epoch(header: &mut [u8], epoch: i32) {
    header[OFF_LEADER_EPOCH..OFF_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::testing::encode_batch;

    #[test]
    fn a_valid_batch_parses_and_validates() {
        let b = encode_batch(7, 1_000, &[b"a".as_slice(), b"bb", b"ccc"]);
        let h = validate_batch(&b).unwrap();
        assert_eq!(h.base_offset, 7);
        assert_eq!(h.magic, 2);
        assert_eq!(h.records_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.total_len(), b.len());
        assert_eq!(h.max_timestamp, 1_002);
    }

    #[test]
    fn a_flipped_byte_fails_the_crc() {
        let b = encode_batch(0, 0, &[b"hello".as_slice()]);
        for i in OFF_ATTRIBUTES..b.len() {
            let mut v = b.to_vec();
            v[i] ^= 0x40;
            assert!(
                matches!(
                    validate_batch(&v),
                    Err(StorageError::CorruptBatch(_)) | Err(StorageError::InvalidBatch(_))
                ),
                "byte {i}"
            );
        }
    }

    #[test]
    fn count_records_walks_batches_however_the_bytes_are_cut() {
        let a = encode_batch(0, 0, &[b"a".as_slice(), b"bb", b"ccc"]);
        let b = encode_batch(3, 0, &[b"dddd".as_slice(); 5]);
        let whole: Vec<u8> = [a.as_ref(), b.as_ref()].concat();
        assert_eq!(count_records(&[&whole]), 8);
        // Any two-piece cut, including inside a header, counts the same.
        for cut in 0..=whole.len() {
            assert_eq!(
                count_records(&[&whole[..cut], &whole[cut..]]),
                8,
                "cut {cut}"
            );
        }
        // Counted from headers: a cut body still counts, a cut header does not.
        assert_eq!(count_records(&[&whole[..whole.len() - 1]]), 8);
        assert_eq!(count_records(&[&whole[..a.len() + 10]]), 3);
        assert_eq!(count_records::<&[u8]>(&[]), 0);
    }

    #[test]
    fn wrong_magic_is_invalid() {
        let mut v = encode_batch(0, 0, &[b"x".as_slice()]).to_vec();
        v[OFF_MAGIC] = 1;
        assert!(matches!(
            validate_batch(&v),
            Err(StorageError::InvalidBatch(_))
        ));
    }

    #[test]
    fn lying_lengths_are_refused_by_split_and_validate() {
        let b = encode_batch(0, 0, &[b"x".as_slice()]);
        let mut v = b.to_vec();
        v[OFF_LENGTH..OFF_LENGTH + 4].copy_from_slice(&(b.len() as i32).to_be_bytes());
        assert!(matches!(
            validate_batch(&v),
            Err(StorageError::CorruptBatch(_))
        ));
        assert!(matches!(
            split_batches(&Bytes::from(v.clone())),
            Err(StorageError::CorruptBatch(_))
        ));
        v[OFF_LENGTH..OFF_LENGTH + 4].copy_from_slice(&3i32.to_be_bytes());
        assert!(matches!(
            split_batches(&Bytes::from(v.clone())),
            Err(StorageError::CorruptBatch(_))
        ));
        v[OFF_LENGTH..OFF_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            split_batches(&Bytes::from(v)),
            Err(StorageError::CorruptBatch(_))
        ));
        assert!(matches!(
            split_batches(&b.slice(..b.len() - 1)),
            Err(StorageError::CorruptBatch(_))
        ));
        assert!(matches!(
            split_batches(&Bytes::from_static(&[0u8; 5])),
            Err(StorageError::CorruptBatch(_))
        ));
        assert!(validate_batch(&[]).is_err());
    }

    #[test]
    fn split_returns_zero_copy_slices() {
        let a = encode_batch(0, 0, &[b"one".as_slice()]);
        let b = encode_batch(0, 0, &[b"two".as_slice(), b"three"]);
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        let all = Bytes::from(all);
        let parts = split_batches(&all).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], a);
        assert_eq!(parts[1], b);
        assert_eq!(parts[1].as_ptr(), all[a.len()..].as_ptr());
        assert!(split_batches(&Bytes::new()).unwrap().is_empty());
    }

    #[test]
    fn patching_the_base_offset_keeps_the_crc_valid() {
        let b = encode_batch(0, 5, &[b"x".as_slice(), b"y"]);
        let p = patch_batch(&b, 1234, None);
        let mut joined = p.header.to_vec();
        joined.extend_from_slice(&p.body);
        let h = validate_batch(&joined).unwrap();
        assert_eq!(h.base_offset, 1234);
        assert_eq!(p.body.as_ptr(), b[BATCH_HEADER_LEN..].as_ptr());
        let p = patch_batch_with_epoch(&b, 7, 42, Some(9));
        let h = validate_batch(&[p.header.as_ref(), p.body.as_ref()].concat()).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch), (7, 42));
    }

    #[test]
    fn log_append_time_rewrites_max_timestamp_and_crc() {
        let b = encode_batch(0, 5, &[b"x".as_slice()]);
        let p = patch_batch(&b, 9, Some(777));
        let mut joined = p.header.to_vec();
        joined.extend_from_slice(&p.body);
        let h = validate_batch(&joined).unwrap();
        assert_eq!(h.max_timestamp, 777);
        assert!(h.is_log_append_time());
    }
}

/// Records in the v2 batches laid end to end across `chunks` (a fetch response's
/// pieces, where a header and its body may be separate buffers), from their headers'
/// records counts, for metrics. Stops at the first malformed length or cut-off header.
/// Reads only headers, never records; copies at most one header at a time.
pub fn count_records<B: AsRef<[u8]>>(chunks: &[B]) -> u64 {
    let mut records = 0u64;
    let mut header = [0u8; BATCH_HEADER_LEN];
    let mut have = 0usize; // header bytes gathered so far
    let mut skip = 0u64; // body bytes of the current batch still to pass
    for chunk in chunks {
        let mut b = chunk.as_ref();
        while !b.is_empty() {
            if skip > 0 {
                let n = (skip.min(b.len() as u64)) as usize;
                skip -= n as u64;
                b = &b[n..];
                continue;
            }
            let n = (BATCH_HEADER_LEN - have).min(b.len());
            header[have..have + n].copy_from_slice(&b[..n]);
            have += n;
            b = &b[n..];
            if have < BATCH_HEADER_LEN {
                continue;
            }
            have = 0;
            let Some(len) = claimed_len(&header) else {
                return records;
            };
            if len < BATCH_HEADER_LEN as i64 {
                return records;
            }
            records += u64::try_from(be_i32(&header, OFF_RECORDS_COUNT)).unwrap_or(0);
            skip = (len as u64) - BATCH_HEADER_LEN as u64;
        }
    }
    records
}
