//! Helpers for tests and benchmarks: a hand encoder for valid v2 batches.
//! Not used by the broker itself.

use bytes::Bytes;

use super::batch::{compute_crc, BATCH_HEADER_LEN, LOG_OVERHEAD, MAGIC_V2};

/// A zigzag varint as Kafka records use them.
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    // Kafka varints are zigzag-encoded.
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if u < 0x80 {
            out.push(u as u8);
            return;
        }
        out.push((u as u8 & 0x7f) | 0x80);
        u >>= 7;
    }
}

/// Encodes an uncompressed v2 batch with one record per value; record i has
/// timestamp `base_timestamp + i` and offset delta i.
pub fn encode_batch(base_offset: i64, base_timestamp: i64, values: &[&[u8]]) -> Bytes {
    assert!(!values.is_empty(), "a batch holds at least one record");
    let mut records = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let mut rec = Vec::with_capacity(v.len() + 16);
        rec.push(0); // record attributes
        put_varint(&mut rec, i as i64); // timestamp delta
        put_varint(&mut rec, i as i64); // offset delta
        put_varint(&mut rec, -1); // null key
        put_varint(&mut rec, v.len() as i64);
        rec.extend_from_slice(v);
        put_varint(&mut rec, 0); // no headers
        put_varint(&mut records, rec.len() as i64);
        records.extend_from_slice(&rec);
    }
    let n = values.len() as i32;
    let mut h = Vec::with_capacity(BATCH_HEADER_LEN);
    h.extend_from_slice(&base_offset.to_be_bytes());
    let batch_length = (BATCH_HEADER_LEN - LOG_OVERHEAD + records.len()) as i32;
    h.extend_from_slice(&batch_length.to_be_bytes());
    h.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
    h.push(MAGIC_V2 as u8);
    h.extend_from_slice(&[0; 4]); // crc, below
    h.extend_from_slice(&0i16.to_be_bytes()); // attributes
    h.extend_from_slice(&(n - 1).to_be_bytes());
    h.extend_from_slice(&base_timestamp.to_be_bytes());
    h.extend_from_slice(&(base_timestamp + i64::from(n - 1)).to_be_bytes());
    h.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    h.extend_from_slice(&(-1i16).to_be_bytes());
    h.extend_from_slice(&(-1i32).to_be_bytes());
    h.extend_from_slice(&n.to_be_bytes());
    assert_eq!(h.len(), BATCH_HEADER_LEN);
    let crc = compute_crc(&h, &records);
    h[17..21].copy_from_slice(&crc.to_be_bytes());
    h.extend_from_slice(&records);
    Bytes::from(h)
}

/// A one-record batch of `size` bytes, for benchmarks: exactly, when a value length
/// gives it (the record's varint lengths make a few sizes unreachable: then within a
/// few bytes).
pub fn encode_batch_of_size(size: usize, base_timestamp: i64) -> Bytes {
    let mut value_len = size.saturating_sub(BATCH_HEADER_LEN + 12).max(1);
    let mut batch = encode_batch(0, base_timestamp, &[&vec![0x5au8; value_len]]);
    // The record's varint lengths depend on the value length: adjust, a few steps.
    for _ in 0..4 {
        if batch.len() == size {
            break;
        }
        value_len = (value_len as i64 + size as i64 - batch.len() as i64).max(1) as usize;
        batch = encode_batch(0, base_timestamp, &[&vec![0x5au8; value_len]]);
    }
    batch
}

/// Encodes a v2 batch of keyed records (`None` key or value = null) with `codec`;
/// record i has offset delta i and timestamp `base_timestamp + i`.
pub fn encode_keyed_batch(
    base_offset: i64,
    base_timestamp: i64,
    records: &[(Option<Vec<u8>>, Option<Vec<u8>>)],
    codec: super::compact::Codec,
) -> Bytes {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let mut raw = Vec::new();
    for (i, (k, v)) in records.iter().enumerate() {
        let mut rec = Vec::new();
        rec.push(0);
        put_varint(&mut rec, i as i64);
        put_varint(&mut rec, i as i64);
        for part in [k, v] {
            match part {
                Some(b) => {
                    put_varint(&mut rec, b.len() as i64);
                    rec.extend_from_slice(b);
                }
                None => put_varint(&mut rec, -1),
            }
        }
        put_varint(&mut rec, 0);
        put_varint(&mut raw, rec.len() as i64);
        raw.extend_from_slice(&rec);
    }
    let n = records.len() as i32;
    let template = super::batch::BatchHeader {
        base_offset,
        batch_length: 0,
        partition_leader_epoch: 0,
        magic: MAGIC_V2,
        crc: 0,
        attributes: 0,
        last_offset_delta: n - 1,
        base_timestamp,
        max_timestamp: base_timestamp + i64::from(n - 1),
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records_count: n,
    };
    Bytes::from(
        super::compact::build_batch(&template, codec, base_offset, n - 1, &raw, n, None)
            .expect("compress in memory"),
    )
}

/// One framed v2 record with offset delta `offset_delta` whose header count says
/// `headers` (no header bytes follow: any count above 0 lies), for tests of lying input.
pub fn encode_record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    offset_delta: i64,
    headers: i64,
) -> Vec<u8> {
    let mut rec = vec![0u8];
    put_varint(&mut rec, 0);
    put_varint(&mut rec, offset_delta);
    for part in [key, value] {
        match part {
            Some(b) => {
                put_varint(&mut rec, b.len() as i64);
                rec.extend_from_slice(b);
            }
            None => put_varint(&mut rec, -1),
        }
    }
    put_varint(&mut rec, headers);
    let mut out = Vec::with_capacity(rec.len() + 5);
    put_varint(&mut out, rec.len() as i64);
    out.extend_from_slice(&rec);
    out
}

/// A v2 batch around already framed `records` claiming `count` records (dense offsets
/// 0..count), compressed with `codec`, with a correct CRC whatever the records say.
pub fn encode_records_batch(records: &[u8], count: i32, codec: super::compact::Codec) -> Bytes {
    let template = super::batch::BatchHeader {
        base_offset: 0,
        batch_length: 0,
        partition_leader_epoch: 0,
        magic: MAGIC_V2,
        crc: 0,
        attributes: 0,
        last_offset_delta: count - 1,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_000,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records_count: count,
    };
    Bytes::from(
        super::compact::build_batch(&template, codec, 0, count - 1, records, count, None)
            .expect("compress in memory"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_of_the_bench_sizes_are_exact() {
        for size in [1 << 10, 16 << 10, 256 << 10, 1 << 20, 100_000] {
            let b = encode_batch_of_size(size, 0);
            assert_eq!(b.len(), size);
            crate::segment::batch::ValidBatch::new(b).expect("a valid batch");
        }
    }
}
