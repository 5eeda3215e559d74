//! Fetch (1) v4–16, with long polling (max.wait.ms / min.bytes). Each partition is read
//! on its owning shard; the result comes back as `Bytes` chunks of whole batches.
//! Fetch sessions (KIP-227) are declined with session id 0, which every client accepts
//! as "send full fetch requests".

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::FetchRequest;
use uuid::Uuid;

use super::fetch_encode::{PartOut, TopicOut};
use crate::net::error_code as ec;
use crate::net::metrics::ShardMetrics;
use crate::segment::StorageError;
use crate::shard::Shard;

pub const MIN: i16 = 4;
pub const MAX: i16 = 16;

/// Upper bound on how long a fetch may park, whatever the client asks.
const FETCH_WAIT_MS_MAX: u64 = 30_000;

struct Target {
    topic: String,
    topic_id: Uuid,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    /// `None` when the topic or partition does not exist.
    owner: Option<usize>,
    unknown_code: i16,
}

#[derive(Default)]
struct PartRead {
    error_code: i16,
    chunks: Vec<Bytes>,
    log_start_offset: i64,
    high_watermark: i64,
}

impl PartRead {
    fn bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }
}

/// Reads one partition on its owning shard (the caller is on that shard).
async fn read_local(
    s: &Shard,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: usize,
) -> PartRead {
    let Some(p) = s.partition(topic, partition) else {
        return PartRead {
            error_code: ec::UNKNOWN_TOPIC_OR_PARTITION,
            log_start_offset: -1,
            high_watermark: -1,
            ..Default::default()
        };
    };
    let (start, end) = (p.log.log_start_offset(), p.log.log_end_offset());
    if offset == end {
        return PartRead {
            log_start_offset: start,
            high_watermark: end,
            ..Default::default()
        };
    }
    match p.log.read(offset, max_bytes).await {
        Ok(r) => PartRead {
            error_code: ec::NONE,
            chunks: r.chunks,
            log_start_offset: r.log_start_offset,
            high_watermark: r.log_end_offset,
        },
        Err(e @ StorageError::OffsetOutOfRange { .. }) => {
            tracing::debug!(error = %e, "fetch out of range");
            PartRead {
                error_code: ec::OFFSET_OUT_OF_RANGE,
                log_start_offset: start,
                high_watermark: end,
                ..Default::default()
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "fetch read failed");
            PartRead {
                error_code: e.kafka_error_code(),
                log_start_offset: start,
                high_watermark: end,
                ..Default::default()
            }
        }
    }
}

/// Reads every target, one hop per owning shard (Redpanda's fetch plan).
async fn read_all(shard: &Rc<Shard>, targets: &[Target]) -> Vec<PartRead> {
    let mut reads: Vec<PartRead> = targets
        .iter()
        .map(|t| PartRead {
            error_code: t.unknown_code,
            log_start_offset: -1,
            high_watermark: -1,
            ..Default::default()
        })
        .collect();
    let mut plan: Vec<Vec<(usize, String, i32, i64, usize)>> = vec![Vec::new(); shard.nshards];
    for (slot, t) in targets.iter().enumerate() {
        if let Some(owner) = t.owner {
            plan[owner].push((slot, t.topic.clone(), t.partition, t.offset, t.max_bytes));
        }
    }
    let hops = plan
        .into_iter()
        .enumerate()
        .filter(|(_, items)| !items.is_empty())
        .map(|(owner, items)| {
            shard.invoke_on(owner, move |s| async move {
                let reads = items
                    .into_iter()
                    .map(|(slot, topic, partition, offset, max_bytes)| {
                        let s = s.clone();
                        async move {
                            (
                                slot,
                                read_local(&s, &topic, partition, offset, max_bytes).await,
                            )
                        }
                    });
                futures::future::join_all(reads).await
            })
        });
    for (slot, r) in futures::future::join_all(hops).await.into_iter().flatten() {
        reads[slot] = r;
    }
    reads
}

/// Resolves when any target's log grows past `ends[i]` (its end at the last read), or
/// after `wait_ms`.
async fn wait_any(shard: &Rc<Shard>, targets: &[Target], ends: &[i64], wait_ms: u64) {
    let waits: Vec<_> = targets
        .iter()
        .zip(ends)
        .filter_map(|(t, end)| {
            let owner = t.owner?;
            let (topic, partition, offset) = (t.topic.clone(), t.partition, t.offset.max(*end));
            Some(Box::pin(shard.invoke_on(owner, move |s| async move {
                if let Some(p) = s.partition(&topic, partition) {
                    p.wait_for_data(offset, wait_ms).await;
                }
            })))
        })
        .collect();
    if waits.is_empty() {
        glommio::timer::sleep(Duration::from_millis(wait_ms)).await;
        return;
    }
    futures::future::select_all(waits).await;
}

/// Reads every requested partition (waiting per max.wait.ms / min.bytes) and returns the
/// response body's contents; `fetch_encode` writes them without copying records.
pub async fn handle(shard: &Rc<Shard>, req: FetchRequest, version: i16) -> Vec<TopicOut> {
    let image = shard.image();
    let mut targets = Vec::new();
    for ft in &req.topics {
        let meta = if version >= 13 {
            image.topic_by_id(ft.topic_id.as_u128())
        } else {
            image.topic(ft.topic.0.as_str())
        };
        let unknown_code = match (meta, version >= 13) {
            (None, true) => ec::UNKNOWN_TOPIC_ID,
            _ => ec::UNKNOWN_TOPIC_OR_PARTITION,
        };
        for fp in &ft.partitions {
            targets.push(Target {
                topic: meta
                    .map(|m| m.name.clone())
                    .unwrap_or_else(|| ft.topic.0.to_string()),
                topic_id: meta.map(|m| Uuid::from_u128(m.id)).unwrap_or(ft.topic_id),
                partition: fp.partition,
                offset: fp.fetch_offset,
                max_bytes: fp.partition_max_bytes.max(0) as usize,
                owner: meta.and_then(|m| shard.owner_of(&m.owners, fp.partition)),
                unknown_code,
            });
        }
    }
    let min_bytes = req.min_bytes.max(0) as usize;
    let started = Instant::now();
    let wait = Duration::from_millis((req.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MS_MAX));
    let reads = loop {
        let reads = read_all(shard, &targets).await;
        let total: usize = reads.iter().map(|r| r.bytes()).sum();
        let errored = reads.iter().any(|r| r.error_code != ec::NONE);
        let elapsed = started.elapsed();
        if total >= min_bytes.max(1) || errored || elapsed >= wait || targets.is_empty() {
            break reads;
        }
        let ends: Vec<i64> = reads.iter().map(|r| r.high_watermark).collect();
        wait_any(shard, &targets, &ends, (wait - elapsed).as_millis() as u64).await;
        if started.elapsed() >= wait {
            break read_all(shard, &targets).await;
        }
    };
    let response_max = if req.max_bytes > 0 {
        req.max_bytes as usize
    } else {
        usize::MAX
    };
    let mut total = 0usize;
    let mut topics: Vec<TopicOut> = Vec::new();
    for (t, r) in targets.iter().zip(reads) {
        let bytes = r.bytes();
        // The response's max_bytes cuts later partitions off, but the first data always goes
        // (Kafka's rule, so one large batch can never block a consumer).
        let chunks = if bytes > 0 && (total == 0 || total + bytes <= response_max) {
            total += bytes;
            r.chunks
        } else {
            Vec::new()
        };
        let part = PartOut {
            partition: t.partition,
            error_code: r.error_code,
            high_watermark: r.high_watermark,
            log_start_offset: r.log_start_offset,
            chunks,
        };
        match topics.last_mut() {
            Some(last) if last.name == t.topic && last.id == t.topic_id => last.parts.push(part),
            _ => topics.push(TopicOut {
                name: t.topic.clone(),
                id: t.topic_id,
                parts: vec![part],
            }),
        }
    }
    ShardMetrics::add(&shard.metrics.fetch_record_bytes, total as u64);
    topics
}
