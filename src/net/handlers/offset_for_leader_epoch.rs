//! OffsetForLeaderEpoch (23) v2–4 (KIP-101, KIP-320): where a leader epoch ended in
//! the leader's log, from the partition's leader-epoch cache
//! (`PartitionLog::end_offset_for_epoch`). A follower asks it before fetching from a
//! new leader and truncates to the answer; consumers (librdkafka) ask it after a
//! leader change to detect log truncation.
//!
//! Per partition, like Kafka's `Partition.lastOffsetForLeaderEpoch`: a
//! `current_leader_epoch` (-1 = not given) older than the partition's leader epoch is
//! FENCED_LEADER_EPOCH, newer is UNKNOWN_LEADER_EPOCH (this broker's metadata is
//! behind); a broker that is not the leader answers NOT_LEADER_OR_FOLLOWER; an
//! unknown partition UNKNOWN_TOPIC_OR_PARTITION. Errors carry epoch and offset -1.

use std::rc::Rc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use crate::kafka_error as ec;
use crate::shard::Shard;

pub const MIN: i16 = 2;
pub const MAX: i16 = 4;

pub async fn handle(
    shard: &Rc<Shard>,
    req: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let node_id = shard.config.node_id;
    let image = shard.image();
    // Checks against the metadata first; partitions that pass go to their shard.
    let checked: Vec<Result<(), i16>> = req
        .topics
        .iter()
        .flat_map(|t| {
            let meta = image.topic(&t.topic.0);
            t.partitions.iter().map(move |p| {
                let Some(meta) = meta.filter(|m| {
                    usize::try_from(p.partition).is_ok_and(|i| i < m.partition_count())
                }) else {
                    return Err(ec::UNKNOWN_TOPIC_OR_PARTITION);
                };
                // A single node leads every partition in epoch 0.
                let epoch = meta
                    .replicas
                    .get(p.partition as usize)
                    .map_or(0, |r| r.leader_epoch);
                let current = p.current_leader_epoch;
                if current >= 0 && current < epoch {
                    Err(ec::FENCED_LEADER_EPOCH)
                } else if current > epoch {
                    Err(ec::UNKNOWN_LEADER_EPOCH)
                } else if meta.leader(p.partition, node_id) != Some(node_id) {
                    Err(ec::NOT_LEADER_OR_FOLLOWER)
                } else {
                    Ok(())
                }
            })
        })
        .collect();
    let work = super::partition_work(
        shard,
        req.topics.iter().flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.topic.0.as_str(), p.partition, p.leader_epoch))
        }),
    )
    .into_iter()
    .zip(&checked)
    .map(|(w, check)| w.filter(|_| check.is_ok()))
    .collect();
    let ends = shard
        .on_partitions(
            work,
            |p, epoch| async move { p.log.end_offset_for_epoch(epoch) },
        )
        .await;
    let mut ends = ends.into_iter();
    let mut checks = checked.into_iter();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let base = EpochEndOffset::default().with_partition(p.partition);
                    let check = checks.next().unwrap_or(Err(ec::UNKNOWN_TOPIC_OR_PARTITION));
                    match (check, ends.next().flatten()) {
                        (Ok(()), Some((epoch, end))) => {
                            base.with_leader_epoch(epoch).with_end_offset(end)
                        }
                        (Ok(()), None) => base
                            .with_error_code(ec::UNKNOWN_TOPIC_OR_PARTITION)
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                        (Err(code), _) => base
                            .with_error_code(code)
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
