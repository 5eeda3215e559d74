//! OffsetForLeaderEpoch (23) v2–4. Every partition has had one leader epoch (0) so far:
//! its end offset is the log end.

use std::rc::Rc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use crate::net::error_code as ec;
use crate::shard::Shard;

pub const MIN: i16 = 2;
pub const MAX: i16 = 4;

pub async fn handle(
    shard: &Rc<Shard>,
    req: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let work = super::partition_work(
        shard,
        req.topics.iter().flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.topic.0.as_str(), p.partition, p.leader_epoch))
        }),
    );
    // (epoch, end offset); epochs above ours are unknown to us: Kafka answers -1/-1.
    let ends = shard
        .on_partitions(work, |p, epoch| async move {
            if epoch > 0 {
                (-1, -1)
            } else {
                (0, p.log.log_end_offset())
            }
        })
        .await;
    let mut ends = ends.into_iter();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let base = EpochEndOffset::default().with_partition(p.partition);
                    match ends.next().flatten() {
                        Some((epoch, end)) => base.with_leader_epoch(epoch).with_end_offset(end),
                        None => base
                            .with_error_code(ec::UNKNOWN_TOPIC_OR_PARTITION)
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
