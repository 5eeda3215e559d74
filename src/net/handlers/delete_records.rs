//! DeleteRecords (21) v0–2: moves each partition's log start offset forward.

use std::rc::Rc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::kafka_error as ec;
use crate::shard::Shard;

pub const MIN: i16 = 0;
pub const MAX: i16 = 2;

pub async fn handle(shard: &Rc<Shard>, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let work = super::partition_work(
        shard,
        req.topics.iter().flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.0.as_str(), p.partition_index, p.offset))
        }),
    );
    // (error, new low watermark) per partition.
    let done = shard
        .on_partitions(work, |p, offset| async move {
            // -1 means "up to the high watermark", and nothing past it may go (Kafka):
            // records a consumer cannot read yet (unreplicated, or on a single node
            // still in the write buffers) cannot be deleted either.
            let end = p.high_watermark();
            let target = if offset == -1 { end } else { offset };
            if target < 0 || target > end {
                return (ec::OFFSET_OUT_OF_RANGE, p.log.log_start_offset());
            }
            match p.log.delete_records_before(target).await {
                Ok(start) => (ec::NONE, start),
                Err(e) => (e.kafka_error_code(), -1),
            }
        })
        .await;
    let mut done = done.into_iter();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let (code, low) = done
                        .next()
                        .flatten()
                        .unwrap_or((ec::UNKNOWN_TOPIC_OR_PARTITION, -1));
                    DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                        .with_low_watermark(low)
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
