//! DeleteRecords (21) v0–2: moves each partition's log start offset forward.

use std::rc::Rc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::net::error_code as ec;
use crate::shard::Shard;

pub const MIN: i16 = 0;
pub const MAX: i16 = 2;

pub async fn handle(shard: &Rc<Shard>, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let image = shard.image();
    let mut topics = Vec::new();
    for t in &req.topics {
        let meta = image.topic(t.name.0.as_str()).cloned();
        let calls = t.partitions.iter().map(|p| {
            let owner = meta
                .as_ref()
                .and_then(|m| shard.owner_of(&m.owners, p.partition_index));
            let (topic, index, offset) = (t.name.0.to_string(), p.partition_index, p.offset);
            async move {
                let Some(owner) = owner else {
                    return (index, ec::UNKNOWN_TOPIC_OR_PARTITION, -1);
                };
                shard
                    .invoke_on(owner, move |s| async move {
                        let Some(p) = s.partition(&topic, index) else {
                            return (index, ec::UNKNOWN_TOPIC_OR_PARTITION, -1);
                        };
                        // -1 means "up to the high watermark".
                        let end = p.log.log_end_offset();
                        let target = if offset == -1 { end } else { offset };
                        if target < 0 || target > end {
                            return (index, ec::OFFSET_OUT_OF_RANGE, p.log.log_start_offset());
                        }
                        match p.log.delete_records_before(target).await {
                            Ok(start) => (index, ec::NONE, start),
                            Err(e) => (index, e.kafka_error_code(), -1),
                        }
                    })
                    .await
            }
        });
        let partitions = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|(i, code, low)| {
                DeleteRecordsPartitionResult::default()
                    .with_partition_index(i)
                    .with_error_code(code)
                    .with_low_watermark(low)
            })
            .collect();
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name.clone())
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
