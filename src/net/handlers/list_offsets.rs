//! ListOffsets (2) v1–8: earliest (-2), latest (-1), max timestamp (-3) and by timestamp.

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::kafka_error as ec;
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
    let work = super::partition_work(
        shard,
        req.topics.iter().flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.0.as_str(), p.partition_index, p.timestamp))
        }),
    );
    let replica = req.replica_id.0;
    // (error, timestamp, offset) per partition.
    let found = shard
        .on_partitions(work, move |p, ts| async move {
            // In a cluster consumers ask the leader, and see offsets below the high
            // watermark; a debugging consumer (-2) may ask any replica for its log end.
            let replicated = p.is_replicated();
            let leads = p.role() == Some(crate::shard::partition::Role::Leader);
            if replicated && !leads && replica != super::fetch::DEBUG_REPLICA_ID {
                return (ec::NOT_LEADER_OR_FOLLOWER, -1, -1, -1);
            }
            let epoch = p.leader_epoch();
            // Kafka's last fetchable offset: a consumer sees offsets below the high
            // watermark (on a single node the written end: what Fetch serves it), a
            // debugging consumer or a replica up to the log end. No transactions yet,
            // so read_committed's last stable offset is the same.
            let fetchable = if replica == -1 {
                p.high_watermark()
            } else {
                p.log.log_end_offset()
            };
            let (code, ts, offset) = match ts {
                LATEST => (ec::NONE, -1, fetchable),
                EARLIEST => (ec::NONE, -1, p.log.log_start_offset()),
                ts => {
                    let found = if ts == MAX_TIMESTAMP {
                        p.log.max_timestamp_offset().await
                    } else {
                        p.log.offset_for_timestamp(ts).await
                    };
                    match found {
                        // A hit at or past the fetchable end is not reported (Kafka):
                        // a consumer seeking there could not read it yet.
                        Ok(Some((offset, found_ts))) if offset < fetchable => {
                            (ec::NONE, found_ts, offset)
                        }
                        Ok(_) => (ec::NONE, -1, -1),
                        Err(e) => (e.kafka_error_code(), -1, -1),
                    }
                }
            };
            (code, ts, offset, epoch)
        })
        .await;
    let mut found = found.into_iter();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let (code, ts, offset, epoch) = found.next().flatten().unwrap_or((
                        ec::UNKNOWN_TOPIC_OR_PARTITION,
                        -1,
                        -1,
                        -1,
                    ));
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                        .with_timestamp(ts)
                        .with_offset(offset)
                        // leader_epoch exists from v4; -1 (its default) encodes everywhere.
                        .with_leader_epoch(if version >= 4 { epoch } else { -1 })
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
