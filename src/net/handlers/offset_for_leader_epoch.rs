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
    let image = shard.image();
    let mut topics = Vec::new();
    for t in &req.topics {
        let meta = image.topic(t.topic.0.as_str()).cloned();
        let lookups = t.partitions.iter().map(|p| {
            let owner = meta
                .as_ref()
                .and_then(|m| shard.owner_of(&m.owners, p.partition));
            let (topic, index, epoch) = (t.topic.0.to_string(), p.partition, p.leader_epoch);
            async move {
                let Some(owner) = owner else {
                    return (index, ec::UNKNOWN_TOPIC_OR_PARTITION, -1, -1);
                };
                shard
                    .invoke_on(owner, move |s| async move {
                        match s.partition(&topic, index) {
                            None => (index, ec::UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
                            // Epochs above ours are unknown to us: Kafka answers -1/-1.
                            Some(_) if epoch > 0 => (index, ec::NONE, -1, -1),
                            Some(p) => (index, ec::NONE, 0, p.log.log_end_offset()),
                        }
                    })
                    .await
            }
        });
        let partitions = futures::future::join_all(lookups)
            .await
            .into_iter()
            .map(|(index, code, epoch, end)| {
                EpochEndOffset::default()
                    .with_partition(index)
                    .with_error_code(code)
                    .with_leader_epoch(epoch)
                    .with_end_offset(end)
            })
            .collect();
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
