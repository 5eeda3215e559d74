//! Committed offsets as records in the internal topic `__consumer_offsets`, in Kafka's
//! own key/value layout so Kafka tooling can read them:
//!
//! - key v1 (offset commit): `i16 version=1, string group, string topic, i32 partition`
//! - value v3: `i16 version=3, i64 offset, i32 leader epoch, string metadata,
//!   i64 commit timestamp`; a null value (tombstone) deletes the key.
//!
//! Strings are `i16 length + UTF-8`. Records go into v2 record batches, appended
//! durably on the partition's owning shard. Replay keeps the last value per key.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::net::error_code as ec;
use crate::segment::Durability;
use crate::shard::Shard;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Bytes read per hop while replaying the offsets topic.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// Creates `__consumer_offsets` (one partition per shard, compacted) if it does not exist
/// and returns its partition → shard table.
pub async fn ensure_topic(shard: &Rc<Shard>) -> Result<Vec<u32>, String> {
    if let Some(t) = shard.image().topic(OFFSETS_TOPIC) {
        return Ok(t.owners.clone());
    }
    // Kafka's offsets.topic.segment.bytes (100 MiB): sealed segments get compacted.
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), "104857600".to_string()),
    ]);
    // In a cluster: offsets.topic.replication.factor, capped at the live brokers when
    // it is decided.
    let rf = if shard.config.cluster.is_some() {
        shard.config.offsets_topic_replication_factor
    } else {
        -1
    };
    let created = crate::net::handlers::create_topics::create_topics_rf(
        shard,
        vec![(OFFSETS_TOPIC.to_string(), shard.nshards as i32, configs, rf)],
        false,
    )
    .await;
    match created.into_iter().next() {
        Some((_, Ok(t))) => Ok(t.owners.clone()),
        // Created concurrently by another request: the image has it now.
        Some((_, Err((code, _)))) if code == ec::TOPIC_ALREADY_EXISTS => shard
            .image()
            .topic(OFFSETS_TOPIC)
            .map(|t| t.owners.clone())
            .ok_or_else(|| "offsets topic exists but is not in the image".to_string()),
        Some((_, Err((_, msg)))) => Err(msg),
        None => Err("offsets topic creation returned nothing".to_string()),
    }
}

/// Partition of `__consumer_offsets` holding a group's records.
pub fn partition_for(group: &str, partitions: usize) -> i32 {
    (super::group_hash(group) % partitions.max(1) as u32) as i32
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Group ids, topic names and metadata are bounded far below i16::MAX by the callers.
    let len = s.len().min(i16::MAX as usize);
    out.put_i16(len as i16);
    out.put_slice(&s.as_bytes()[..len]);
}

fn get_str(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let len = b.get_i16();
    if len < 0 {
        return Some(String::new());
    }
    let len = len as usize;
    if b.remaining() < len {
        return None;
    }
    String::from_utf8(b.split_to(len).to_vec()).ok()
}

pub fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut out = BytesMut::with_capacity(10 + group.len() + topic.len());
    out.put_i16(1);
    put_str(&mut out, group);
    put_str(&mut out, topic);
    out.put_i32(partition);
    out.freeze()
}

pub fn offset_value(offset: i64, leader_epoch: i32, metadata: &str, commit_ms: i64) -> Bytes {
    let mut out = BytesMut::with_capacity(26 + metadata.len());
    out.put_i16(3);
    out.put_i64(offset);
    out.put_i32(leader_epoch);
    put_str(&mut out, metadata);
    out.put_i64(commit_ms);
    out.freeze()
}

/// (group, topic, partition) of an offset-commit key; `None` for other record kinds
/// (group metadata, future versions) or garbage.
pub fn decode_offset_key(mut b: Bytes) -> Option<(String, String, i32)> {
    if b.remaining() < 2 {
        return None;
    }
    let version = b.get_i16();
    if version != 0 && version != 1 {
        return None;
    }
    let group = get_str(&mut b)?;
    let topic = get_str(&mut b)?;
    if b.remaining() < 4 {
        return None;
    }
    Some((group, topic, b.get_i32()))
}

/// (offset, leader epoch, metadata, commit ms) of values v1 and v3.
pub fn decode_offset_value(mut b: Bytes) -> Option<(i64, i32, String, i64)> {
    if b.remaining() < 2 {
        return None;
    }
    let version = b.get_i16();
    if b.remaining() < 8 {
        return None;
    }
    let offset = b.get_i64();
    let epoch = if version >= 3 {
        if b.remaining() < 4 {
            return None;
        }
        b.get_i32()
    } else {
        -1
    };
    let metadata = get_str(&mut b)?;
    let commit_ms = if b.remaining() >= 8 { b.get_i64() } else { -1 };
    Some((offset, epoch, metadata, commit_ms))
}

/// Appends key/value records as one batch to the group's offsets partition and waits
/// until it is on disk. Returns the log offset of the first record (the rest follow in
/// order). Errors are Kafka error codes for the commit response.
pub async fn append(
    shard: &Rc<Shard>,
    group: &str,
    records: Vec<(Bytes, Option<Bytes>)>,
) -> Result<i64, i16> {
    assert!(!records.is_empty(), "append of no records");
    let owners = ensure_topic(shard).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot create the offsets topic");
        super::codes::COORDINATOR_NOT_AVAILABLE
    })?;
    let partition = partition_for(group, owners.len());
    let owner = shard
        .owner_of(&owners, partition)
        .ok_or(super::codes::COORDINATOR_NOT_AVAILABLE)?;
    // In a cluster only the partition's leader writes it (a follower's copy is the
    // leader's log); leadership may have moved since the request was admitted.
    let me = shard.config.node_id;
    if shard
        .image()
        .topic(OFFSETS_TOPIC)
        .is_some_and(|t| t.leader(partition, me) != Some(me))
    {
        return Err(super::cluster::NOT_COORDINATOR);
    }
    let now = crate::now_ms();
    let recs: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now,
            key: Some(key),
            value,
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &recs,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| {
        // Our own records: a bug, not input.
        tracing::error!(error = %e, "encoding offset records failed");
        ec::UNKNOWN_SERVER_ERROR
    })?;
    let batch = buf.freeze();
    let outcome = shard
        .invoke_on(owner, move |s| async move {
            match s.partition(OFFSETS_TOPIC, partition) {
                Some(p) => Ok(p.produce(batch, Durability::Durable).await),
                None => Err(()),
            }
        })
        .await;
    match outcome {
        Ok(o) if o.error_code == ec::NONE => Ok(o.base_offset),
        Ok(o) => {
            tracing::warn!(code = o.error_code, msg = ?o.error_message, "offset commit append failed");
            Err(o.error_code)
        }
        Err(()) => Err(super::codes::COORDINATOR_NOT_AVAILABLE),
    }
}

/// One replayed record: (log offset, key, value or tombstone).
pub type Replayed = (i64, Bytes, Option<Bytes>);

/// Partitions of `__consumer_offsets` that can hold groups coordinated by `shard`.
/// Empty when the topic does not exist yet.
pub fn partitions_for_shard(shard: &Shard) -> Vec<i32> {
    let image = shard.image();
    let Some(topic) = image.topic(OFFSETS_TOPIC) else {
        return Vec::new();
    };
    let partitions = topic.owners.len();
    // With one partition per shard, group → shard and group → partition use the same
    // modulus, so a shard's groups all sit in its own partition.
    if partitions == shard.nshards {
        vec![shard.id as i32]
    } else {
        (0..partitions as i32).collect()
    }
}

/// Reads every record of the given `__consumer_offsets` partitions, in log order per
/// partition. An absent topic has nothing to replay.
pub async fn replay(
    shard: &Rc<Shard>,
    partitions: &[i32],
    mut apply: impl FnMut(Replayed),
) -> Result<(), String> {
    let Some(topic) = shard.image().topic(OFFSETS_TOPIC).cloned() else {
        return Ok(());
    };
    for &p in partitions {
        let Some(owner) = shard.owner_of(&topic.owners, p) else {
            continue;
        };
        let mut offset = -1i64;
        loop {
            let from = offset;
            let read: Result<Option<(Vec<Bytes>, i64, i64)>, String> = shard
                .invoke_on(owner, move |s| async move {
                    let Some(part) = s.partition(OFFSETS_TOPIC, p) else {
                        return Err(format!("{OFFSETS_TOPIC}-{p} is not open"));
                    };
                    let start = part.log.log_start_offset();
                    let end = part.log.log_end_offset();
                    let from = from.max(start);
                    if from >= end {
                        return Ok(None);
                    }
                    part.log
                        .read(from, REPLAY_READ_BYTES)
                        .await
                        .map(|r| Some((r.chunks, from, end)))
                        .map_err(|e| e.to_string())
                })
                .await;
            let Some((chunks, from, end)) = read? else {
                break;
            };
            // A batch may span two chunks: decode from one contiguous buffer.
            let mut buf = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in chunks {
                buf.extend_from_slice(&c);
            }
            let bytes = buf.freeze();
            let mut next = from;
            // Batch headers give the next offset: compaction leaves batches whose last
            // offset is past their last record, and batches without records.
            for batch in crate::segment::batch::split_batches(&bytes)
                .map_err(|e| format!("{OFFSETS_TOPIC}-{p}: {e}"))?
            {
                let h = crate::segment::BatchHeader::parse(&batch)
                    .map_err(|e| format!("{OFFSETS_TOPIC}-{p}: {e}"))?;
                next = next.max(h.last_offset() + 1);
                if h.records_count == 0 {
                    continue;
                }
                let set = RecordBatchDecoder::decode(&mut batch.clone())
                    .map_err(|e| format!("{OFFSETS_TOPIC}-{p}: undecodable batch: {e}"))?;
                for r in set.records {
                    if r.control {
                        continue;
                    }
                    if let Some(key) = r.key {
                        apply((r.offset, key, r.value));
                    }
                }
            }
            if next <= from {
                return Err(format!(
                    "{OFFSETS_TOPIC}-{p}: replay made no progress at {from}"
                ));
            }
            offset = next;
            if offset >= end {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_records_round_trip() {
        let k = offset_key("g", "t", 7);
        assert_eq!(decode_offset_key(k), Some(("g".into(), "t".into(), 7)));
        let v = offset_value(42, 3, "meta", 1000);
        assert_eq!(decode_offset_value(v), Some((42, 3, "meta".into(), 1000)));
    }

    #[test]
    fn garbage_keys_are_skipped_not_fatal() {
        assert_eq!(decode_offset_key(Bytes::from_static(b"\x00\x01\x7f")), None);
        assert_eq!(
            decode_offset_key(Bytes::from_static(b"\x00\x02\x00\x01g")),
            None
        );
        assert_eq!(decode_offset_value(Bytes::from_static(b"\x00")), None);
    }
}
