//! How a coordinator keeps its state in an internal topic (`__consumer_offsets` now,
//! `__transaction_state` and `__share_group_state` next): the topic is created on first
//! use; key/value records are appended as one batch on the partition's leader and
//! acknowledged once durable, and in a cluster once the in-sync replicas have them, so a
//! coordinator failover keeps them; the partition is replayed from its start to rebuild
//! the state. Coordinators go through this, never through protocol handlers.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::kafka_error as ec;
use crate::segment::{BatchHeader, Durability, StorageError};
use crate::shard::Shard;

/// What a coordinator's topic is made with when it does not exist yet.
pub struct TopicSpec {
    pub name: &'static str,
    pub partitions: u32,
    /// -1: the broker's default (in a cluster capped at the live brokers when decided).
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

/// Creates the topic unless it exists and returns its partition → shard table. The
/// table comes from the metadata, never from this broker's settings, so every broker
/// of a cluster agrees where a key lives.
pub async fn ensure(shard: &Rc<Shard>, spec: TopicSpec) -> Result<Vec<u32>, String> {
    if let Some(t) = shard.image().topic(spec.name) {
        return Ok(t.owners.clone());
    }
    let created = super::topics::create_topics_rf(
        shard,
        vec![(
            spec.name.to_string(),
            spec.partitions as i32,
            spec.configs,
            spec.replication_factor,
        )],
        false,
    )
    .await;
    let name = spec.name;
    match created.into_iter().next() {
        Some((_, Ok(t))) => Ok(t.owners.clone()),
        // Created concurrently by another request: the image has it now.
        Some((_, Err((code, _)))) if code == ec::TOPIC_ALREADY_EXISTS => shard
            .image()
            .topic(name)
            .map(|t| t.owners.clone())
            .ok_or_else(|| format!("{name} exists but is not in the image")),
        Some((_, Err((_, msg)))) => Err(msg),
        None => Err(format!("creating {name} returned nothing")),
    }
}

/// Key/value records as one uncompressed v2 batch, timestamped `timestamp_ms`.
pub fn encode_records(
    records: Vec<(Bytes, Option<Bytes>)>,
    timestamp_ms: i64,
) -> Result<Bytes, String> {
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
            timestamp: timestamp_ms,
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
    .map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// Why an append to a coordinator's partition did not hold.
#[derive(Debug)]
pub enum AppendError {
    /// This broker does not lead the partition (or stopped leading it): the
    /// coordinator moved with it.
    NotLeader,
    /// Durable here, but not on the in-sync replicas within the timeout.
    NotReplicated,
    /// The partition is not open on its owning shard.
    Offline,
    /// The append itself failed, with its Kafka error code.
    Failed { code: i16, message: Option<String> },
}

/// Appends `batch` to `topic`-`partition` on its owning shard and waits until it is
/// durable, and in a cluster until the in-sync replicas have it (at most
/// `replication_timeout`: a coordinator's acks=all). Returns the batch's base offset.
pub async fn append(
    shard: &Rc<Shard>,
    topic: &'static str,
    partition: i32,
    batch: Bytes,
    replication_timeout: Duration,
) -> Result<i64, AppendError> {
    let image = shard.image();
    let Some(t) = image.topic(topic) else {
        return Err(AppendError::Offline);
    };
    let owner = shard
        .owner_of(&t.owners, partition)
        .ok_or(AppendError::Offline)?;
    // In a cluster only the partition's leader writes it (a follower's copy is the
    // leader's log); leadership may have moved since the request was admitted.
    let me = shard.config.node_id;
    if t.leader(partition, me) != Some(me) {
        return Err(AppendError::NotLeader);
    }
    shard
        .invoke_on(owner, move |s| async move {
            let Some(p) = s.partition(topic, partition) else {
                return Err(AppendError::Offline);
            };
            let o = p.produce(batch, Durability::Durable).await;
            match o.error_code {
                ec::NONE => {}
                ec::NOT_LEADER_OR_FOLLOWER => return Err(AppendError::NotLeader),
                code => {
                    return Err(AppendError::Failed {
                        code,
                        message: o.error_message,
                    })
                }
            }
            if !p.is_replicated() {
                return Ok(o.base_offset);
            }
            match p
                .wait_high_watermark(o.end_offset, replication_timeout)
                .await
            {
                Ok(()) => Ok(o.base_offset),
                Err(ec::NOT_LEADER_OR_FOLLOWER) => Err(AppendError::NotLeader),
                Err(_) => Err(AppendError::NotReplicated),
            }
        })
        .await
}

/// One replayed record: (log offset, key, value or tombstone).
pub type Replayed = (i64, Bytes, Option<Bytes>);

/// Reads every keyed record of the given partitions of `topic`, in log order per
/// partition, `read_bytes` per hop to the owning shard. A batch that does not decode is
/// skipped whole (logged; none of its records applied) so the rest still loads, since
/// retrying cannot make those bytes readable. Returns how many batches were skipped.
/// An absent topic has nothing to replay.
pub async fn replay(
    shard: &Rc<Shard>,
    topic: &'static str,
    partitions: &[i32],
    read_bytes: usize,
    mut apply: impl FnMut(Replayed),
) -> Result<u64, String> {
    let Some(meta) = shard.image().topic(topic).cloned() else {
        return Ok(0);
    };
    let mut skipped = 0u64;
    for &p in partitions {
        let Some(owner) = shard.owner_of(&meta.owners, p) else {
            continue;
        };
        let mut offset = -1i64;
        loop {
            let from = offset;
            let read: Result<Option<(Vec<Bytes>, i64, i64)>, String> = shard
                .invoke_on(owner, move |s| async move {
                    let Some(part) = s.partition(topic, p) else {
                        return Err(format!("{topic}-{p} is not open"));
                    };
                    let start = part.log.log_start_offset();
                    let end = part.log.log_end_offset();
                    let from = from.max(start);
                    if from >= end {
                        return Ok(None);
                    }
                    part.log
                        .read(from, read_bytes)
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
                .map_err(|e| format!("{topic}-{p}: {e}"))?
            {
                let h = BatchHeader::parse(&batch).map_err(|e| format!("{topic}-{p}: {e}"))?;
                next = next.max(h.last_offset() + 1);
                if h.records_count == 0 {
                    continue;
                }
                match decode_stored_batch(&batch, &h) {
                    Ok(records) => records.into_iter().for_each(&mut apply),
                    Err(e) => {
                        skipped += 1;
                        tracing::warn!(
                            topic,
                            partition = p,
                            offset = h.base_offset,
                            last_offset = h.last_offset(),
                            error = %e,
                            "undecodable {} batch skipped; its records are lost",
                            records_kind(topic)
                        );
                    }
                }
            }
            if next <= from {
                return Err(format!("{topic}-{p}: replay made no progress at {from}"));
            }
            offset = next;
            if offset >= end {
                break;
            }
        }
    }
    Ok(skipped)
}

/// What a topic's records are, for log lines operators search for.
fn records_kind(topic: &str) -> &'static str {
    match topic {
        crate::metadata::OFFSETS_TOPIC => "offsets",
        crate::metadata::TRANSACTION_STATE_TOPIC => "transaction state",
        crate::metadata::SHARE_GROUP_STATE_TOPIC => "share group state",
        _ => "internal topic",
    }
}

/// The keyed records of one stored batch (control batches have none), read by the
/// validating walker: all of them, or an error and none.
pub fn decode_stored_batch(batch: &Bytes, h: &BatchHeader) -> Result<Vec<Replayed>, StorageError> {
    use crate::segment::{compact, records, BATCH_HEADER_LEN};
    crate::segment::batch::validate_batch(batch)?;
    if h.attributes & records::ATTR_CONTROL != 0 {
        return Ok(Vec::new());
    }
    let codec = compact::Codec::from_attributes(h.attributes)?;
    let raw = if codec == compact::Codec::None {
        batch.slice(BATCH_HEADER_LEN..)
    } else {
        Bytes::from(compact::decompress(codec, &batch[BATCH_HEADER_LEN..])?)
    };
    let mut out = Vec::new();
    records::walk_records(&raw, h.records_count, |_, r| {
        if let Some(k) = &r.key {
            let offset = h.base_offset.saturating_add(i64::from(r.offset_delta));
            out.push((
                offset,
                raw.slice(k.clone()),
                r.value.clone().map(|v| raw.slice(v)),
            ));
        }
        Ok(())
    })?;
    Ok(out)
}
