//! ListOffsets (2) v1–8: earliest (-2), latest (-1), max timestamp (-3) and by timestamp.

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::net::error_code as ec;
use crate::shard::Shard;

pub const MIN: i16 = 1;
pub const MAX: i16 = 8;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub async fn handle(
    shard: &Rc<Shard>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let image = shard.image();
    let mut topics = Vec::new();
    for t in &req.topics {
        let meta = image.topic(t.name.0.as_str()).cloned();
        let lookups = t.partitions.iter().map(|p| {
            let owner = meta
                .as_ref()
                .and_then(|m| shard.owner_of(&m.owners, p.partition_index));
            let (topic, index, ts) = (t.name.0.to_string(), p.partition_index, p.timestamp);
            async move {
                let Some(owner) = owner else {
                    return (index, ec::UNKNOWN_TOPIC_OR_PARTITION, -1, -1);
                };
                shard
                    .invoke_on(owner, move |s| async move {
                        let Some(p) = s.partition(&topic, index) else {
                            return (index, ec::UNKNOWN_TOPIC_OR_PARTITION, -1, -1);
                        };
                        match ts {
                            LATEST | MAX_TIMESTAMP => (index, ec::NONE, -1, p.log.log_end_offset()),
                            EARLIEST => (index, ec::NONE, -1, p.log.log_start_offset()),
                            ts => match p.log.offset_for_timestamp(ts).await {
                                Ok(Some((offset, found_ts))) => (index, ec::NONE, found_ts, offset),
                                Ok(None) => (index, ec::NONE, -1, -1),
                                Err(e) => (index, e.kafka_error_code(), -1, -1),
                            },
                        }
                    })
                    .await
            }
        });
        let partitions = futures::future::join_all(lookups)
            .await
            .into_iter()
            .map(|(index, code, ts, offset)| {
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(index)
                    .with_error_code(code)
                    .with_timestamp(ts)
                    .with_offset(offset)
                    // leader_epoch exists from v4; -1 (its default) encodes everywhere.
                    .with_leader_epoch(if version >= 4 { 0 } else { -1 })
            })
            .collect();
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
