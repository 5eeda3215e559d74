//! Committed offsets as records in the internal topic `__consumer_offsets`, in Kafka's
//! own key/value layout so Kafka tooling can read them:
//!
//! - key v1 (offset commit): `i16 version=1, string group, string topic, i32 partition`
//! - value v3: `i16 version=3, i64 offset, i32 leader epoch, string metadata,
//!   i64 commit timestamp`; a null value (tombstone) deletes the key.
//! - key v2 (group metadata): `i16 version=2, string group`
//! - value v3 (Kafka's `GroupMetadataValue` v3, the last non-flexible one):
//!   `i16 version=3, string protocol type, i32 generation, nullable string protocol,
//!   nullable string leader, i64 current state timestamp, [member]` with member =
//!   `string member id, nullable string group instance id, string client id,
//!   string client host, i32 rebalance timeout ms, i32 session timeout ms,
//!   bytes subscription, bytes assignment`; a tombstone deletes the group.
//!
//! Strings are `i16 length + UTF-8` (-1: null), bytes `i32 length`, arrays `i32 count`.
//! Records go into v2 record batches, appended durably on the partition's owning
//! shard. Replay keeps the last value per key.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::kafka_error as ec;
use crate::metrics::ShardMetrics;
use crate::replication::internal_topic::{self, AppendError, TopicSpec};
use crate::shard::Shard;

pub use crate::metadata::OFFSETS_TOPIC;
/// Bytes read per hop while replaying the offsets topic.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// Creates `__consumer_offsets` (`offsets.topic.num.partitions` partitions, compacted)
/// if it does not exist and returns its partition → shard table. Where a group lives
/// follows the topic's partition count in the metadata, never this broker's settings
/// or cores, so every broker of a cluster agrees.
pub async fn ensure_topic(shard: &Rc<Shard>) -> Result<Vec<u32>, String> {
    // In a cluster: offsets.topic.replication.factor, capped at the live brokers when
    // it is decided.
    let replication_factor = if shard.config.cluster.is_some() {
        shard.config.offsets_topic_replication_factor
    } else {
        -1
    };
    internal_topic::ensure(
        shard,
        TopicSpec {
            name: OFFSETS_TOPIC,
            partitions: shard.config.offsets_topic_num_partitions,
            replication_factor,
            // Kafka's offsets.topic.segment.bytes (100 MiB): sealed segments get compacted.
            configs: BTreeMap::from([
                ("cleanup.policy".to_string(), "compact".to_string()),
                ("segment.bytes".to_string(), "104857600".to_string()),
            ]),
        },
    )
    .await
}

/// Says at startup when an existing `__consumer_offsets` has another partition count
/// than `offsets.topic.num.partitions`: the topic keeps its count (changing it would
/// move groups away from their committed offsets), as on Kafka.
pub fn note_existing_partition_count(shard: &Shard) {
    let image = shard.image();
    let Some(topic) = image.topic(OFFSETS_TOPIC) else {
        return;
    };
    let existing = topic.partition_count();
    let configured = shard.config.offsets_topic_num_partitions as usize;
    if existing != configured {
        tracing::warn!(
            existing,
            configured,
            "{OFFSETS_TOPIC} exists with {existing} partitions and keeps them; \
             offsets.topic.num.partitions={configured} applies only when the topic is created"
        );
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

/// A group as its metadata record stores it: the generation in force and its members
/// with their subscription (of the chosen protocol) and assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_ms: i64,
    pub members: Vec<MemberMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMetadata {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// Bound on a stored group's member count when decoding: a corrupt count must not
/// become a huge allocation.
const GROUP_MEMBERS_MAX: usize = 100_000;
/// The fewest bytes a stored member takes (v0: member id, client id and host as empty
/// strings, the session timeout, empty subscription and assignment): a count the
/// value's remaining bytes cannot hold is refused before anything is allocated.
const MEMBER_BYTES_MIN: usize = 2 + 2 + 2 + 4 + 4 + 4;

fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.put_i16(-1),
    }
}

fn get_opt_str(b: &mut Bytes) -> Option<Option<String>> {
    if b.remaining() < 2 {
        return None;
    }
    if i16::from_be_bytes([b[0], b[1]]) < 0 {
        b.advance(2);
        return Some(None);
    }
    get_str(b).map(Some)
}

fn put_bytes(out: &mut BytesMut, v: &[u8]) {
    out.put_i32(v.len() as i32);
    out.put_slice(v);
}

fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 4 {
        return None;
    }
    let len = b.get_i32();
    if len < 0 {
        return Some(Bytes::new());
    }
    let len = len as usize;
    if b.remaining() < len {
        return None;
    }
    Some(b.split_to(len))
}

pub fn group_key(group: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + group.len());
    out.put_i16(2);
    put_str(&mut out, group);
    out.freeze()
}

/// The group of a group-metadata key; `None` for other record kinds or garbage.
pub fn decode_group_key(mut b: Bytes) -> Option<String> {
    if b.remaining() < 2 || b.get_i16() != 2 {
        return None;
    }
    get_str(&mut b)
}

pub fn group_value(g: &GroupMetadata) -> Bytes {
    let members_len: usize = g
        .members
        .iter()
        .map(|m| {
            40 + m.member_id.len()
                + m.instance_id.as_ref().map_or(0, String::len)
                + m.client_id.len()
                + m.client_host.len()
                + m.subscription.len()
                + m.assignment.len()
        })
        .sum();
    let mut out = BytesMut::with_capacity(32 + g.protocol_type.len() + members_len);
    out.put_i16(3);
    put_str(&mut out, &g.protocol_type);
    out.put_i32(g.generation);
    put_opt_str(&mut out, g.protocol.as_deref());
    put_opt_str(&mut out, g.leader.as_deref());
    out.put_i64(g.state_ms);
    out.put_i32(g.members.len() as i32);
    for m in &g.members {
        put_str(&mut out, &m.member_id);
        put_opt_str(&mut out, m.instance_id.as_deref());
        put_str(&mut out, &m.client_id);
        put_str(&mut out, &m.client_host);
        out.put_i32(m.rebalance_timeout_ms);
        out.put_i32(m.session_timeout_ms);
        put_bytes(&mut out, &m.subscription);
        put_bytes(&mut out, &m.assignment);
    }
    out.freeze()
}

/// Group metadata values v0..v3 (v4+ are flexible: `None`, like garbage, so a record
/// written by a newer Kafka is skipped rather than misread).
pub fn decode_group_value(mut b: Bytes) -> Option<GroupMetadata> {
    if b.remaining() < 2 {
        return None;
    }
    let version = b.get_i16();
    if !(0..=3).contains(&version) {
        return None;
    }
    let protocol_type = get_str(&mut b)?;
    if b.remaining() < 4 {
        return None;
    }
    let generation = b.get_i32();
    let protocol = get_opt_str(&mut b)?;
    let leader = get_opt_str(&mut b)?;
    let state_ms = if version >= 2 {
        if b.remaining() < 8 {
            return None;
        }
        b.get_i64()
    } else {
        -1
    };
    if b.remaining() < 4 {
        return None;
    }
    let count = b.get_i32().max(0) as usize;
    if count > GROUP_MEMBERS_MAX || count > b.remaining() / MEMBER_BYTES_MIN {
        return None;
    }
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let member_id = get_str(&mut b)?;
        let instance_id = if version >= 3 {
            get_opt_str(&mut b)?
        } else {
            None
        };
        let client_id = get_str(&mut b)?;
        let client_host = get_str(&mut b)?;
        let need = if version >= 1 { 8 } else { 4 };
        if b.remaining() < need {
            return None;
        }
        let rebalance_timeout_ms = if version >= 1 { b.get_i32() } else { -1 };
        let session_timeout_ms = b.get_i32();
        let subscription = get_bytes(&mut b)?;
        let assignment = get_bytes(&mut b)?;
        members.push(MemberMetadata {
            member_id,
            instance_id,
            client_id,
            client_host,
            // v0 has no rebalance timeout: Kafka took the session timeout.
            rebalance_timeout_ms: if rebalance_timeout_ms < 0 {
                session_timeout_ms
            } else {
                rebalance_timeout_ms
            },
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Some(GroupMetadata {
        protocol_type,
        generation,
        protocol,
        leader,
        state_ms,
        members,
    })
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
    let batch = internal_topic::encode_records(records, crate::time::now_ms()).map_err(|e| {
        // Our own records: a bug, not input.
        tracing::error!(error = %e, "encoding offset records failed");
        ec::UNKNOWN_SERVER_ERROR
    })?;
    // In a cluster a commit holds once the in-sync replicas have it (Kafka's acks=-1 for
    // __consumer_offsets, offsets.commit.timeout.ms), so a coordinator failover keeps it.
    match internal_topic::append(
        shard,
        OFFSETS_TOPIC,
        partition,
        batch,
        OFFSETS_COMMIT_TIMEOUT,
    )
    .await
    {
        Ok(base_offset) => Ok(base_offset),
        // The offsets partition's leadership (and the group) moved.
        Err(AppendError::NotLeader) => Err(super::cluster::NOT_COORDINATOR),
        Err(AppendError::NotReplicated) => {
            tracing::warn!(
                group,
                "offsets not replicated to the in-sync replicas in time"
            );
            Err(super::codes::COORDINATOR_NOT_AVAILABLE)
        }
        Err(AppendError::Offline) => Err(super::codes::COORDINATOR_NOT_AVAILABLE),
        Err(AppendError::Failed { code, message }) => {
            tracing::warn!(code, msg = ?message, "__consumer_offsets append failed");
            Err(code)
        }
    }
}

/// Kafka's offsets.commit.timeout.ms: how long a commit waits for the in-sync replicas.
const OFFSETS_COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub use internal_topic::Replayed;

/// Partitions of `__consumer_offsets` that can hold groups coordinated by `shard`.
/// Empty when the topic does not exist yet.
pub fn partitions_for_shard(shard: &Shard) -> Vec<i32> {
    let image = shard.image();
    let Some(topic) = image.topic(OFFSETS_TOPIC) else {
        return Vec::new();
    };
    let partitions = topic.owners.len();
    // group → shard is hash % nshards and group → partition hash % partitions: when the
    // shards divide the partitions, a shard's groups sit only in partitions p with
    // p % nshards == its id.
    if partitions % shard.nshards == 0 {
        (shard.id..partitions)
            .step_by(shard.nshards)
            .map(|p| p as i32)
            .collect()
    } else {
        (0..partitions as i32).collect()
    }
}

/// Reads every record of the given `__consumer_offsets` partitions, in log order per
/// partition. An absent topic has nothing to replay.
pub async fn replay(
    shard: &Rc<Shard>,
    partitions: &[i32],
    apply: impl FnMut(Replayed),
) -> Result<(), String> {
    let skipped =
        internal_topic::replay(shard, OFFSETS_TOPIC, partitions, REPLAY_READ_BYTES, apply).await?;
    ShardMetrics::add(&shard.metrics.offsets_batches_quarantined, skipped);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_shards_divide_the_partitions_a_shards_groups_sit_in_its_partitions() {
        for i in 0..500 {
            let g = format!("group-{i}");
            for nshards in [1, 2, 5] {
                let p = partition_for(&g, 50) as usize;
                assert_eq!(
                    p % nshards,
                    super::super::coordinator_shard(&g, nshards),
                    "{g}"
                );
            }
        }
    }

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
        assert_eq!(
            decode_group_key(Bytes::from_static(b"\x00\x02\x00\x09g")),
            None
        );
        assert_eq!(
            decode_group_value(Bytes::from_static(b"\x00\x03\x00")),
            None
        );
    }

    #[test]
    fn group_metadata_round_trips_and_is_not_an_offset_key() {
        let g = GroupMetadata {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            state_ms: 1234,
            members: vec![
                MemberMetadata {
                    member_id: "m1".into(),
                    instance_id: None,
                    client_id: "c1".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 45_000,
                    subscription: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"asg"),
                },
                MemberMetadata {
                    member_id: "m2".into(),
                    instance_id: Some("i2".into()),
                    client_id: "c2".into(),
                    client_host: String::new(),
                    rebalance_timeout_ms: 1,
                    session_timeout_ms: 2,
                    subscription: Bytes::new(),
                    assignment: Bytes::new(),
                },
            ],
        };
        assert_eq!(decode_group_value(group_value(&g)), Some(g));
        let empty = GroupMetadata {
            protocol_type: String::new(),
            generation: 3,
            protocol: None,
            leader: None,
            state_ms: -1,
            members: vec![],
        };
        assert_eq!(decode_group_value(group_value(&empty)), Some(empty));
        let k = group_key("g");
        assert_eq!(decode_group_key(k.clone()), Some("g".into()));
        assert_eq!(decode_offset_key(k), None);
        assert_eq!(decode_group_key(offset_key("g", "t", 0)), None);
    }
}
