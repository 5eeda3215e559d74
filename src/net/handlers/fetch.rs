//! Fetch (1) v4–16, with long polling (max.wait.ms / min.bytes). Each partition is read
//! on its owning shard; the result comes back as `Bytes` chunks of whole batches.
//! Incremental fetch sessions (KIP-227) are in `fetch_session`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::FetchRequest;
use uuid::Uuid;

use super::fetch_encode::{PartOut, TopicOut};
use super::fetch_session::{self, SessionPartition};
use crate::net::error_code as ec;
use crate::net::metrics::{self, ShardMetrics, Stage, StagedApi};
use crate::segment::StorageError;
use crate::shard::Shard;

pub const MIN: i16 = 4;
pub const MAX: i16 = 16;
const FETCH_API_KEY: i16 = 1;

/// Upper bound on how long a fetch may park, whatever the client asks.
const FETCH_WAIT_MS_MAX: u64 = 30_000;
/// Kafka's broker `fetch.max.bytes` default (55 MiB): the most one Fetch response
/// carries, whatever the client asks for (bounds what one request can pin in memory).
pub const FETCH_RESPONSE_BYTES_MAX: usize = 55 << 20;

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
    // No allowance left in this response (or nothing new): offsets only.
    if offset == end || (max_bytes == 0 && (start..end).contains(&offset)) {
        return PartRead {
            log_start_offset: start,
            high_watermark: end,
            ..Default::default()
        };
    }
    let read_started = Instant::now();
    let read = p.log.read(offset, max_bytes).await;
    metrics::record_stage(StagedApi::Fetch, Stage::Read, read_started.elapsed());
    match read {
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

/// Reads every target, one hop per owning shard (Redpanda's fetch plan). Each shard
/// reads its partitions in request order while `budget` (the response's max_bytes)
/// lasts, so a fetch never reads (and, from disk, copies) much more than it can send;
/// partitions past the budget report only their offsets and are served next time.
async fn read_all(shard: &Rc<Shard>, targets: &[Target], budget: usize) -> Vec<PartRead> {
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
            shard.invoke_on_staged(owner, Some(StagedApi::Fetch), move |s| async move {
                let mut left = budget;
                let mut out = Vec::with_capacity(items.len());
                for (slot, topic, partition, offset, max_bytes) in items {
                    let r = read_local(&s, &topic, partition, offset, max_bytes.min(left)).await;
                    left = left.saturating_sub(r.bytes());
                    out.push((slot, r));
                }
                out
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

/// What a Fetch answers: a top-level error (session problems), the session id, and the
/// partitions to include.
pub struct FetchOutcome {
    pub error_code: i16,
    pub session_id: i32,
    pub topics: Vec<TopicOut>,
}

enum Mode {
    /// Full request, full response, no session (librdkafka; session id 0, epoch -1).
    Sessionless,
    /// Full request that opens a session (epoch 0).
    New,
    /// Changes against a session; only partitions with news are answered.
    Incremental(i32, fetch_session::Session),
}

/// Reads every requested partition (waiting per max.wait.ms / min.bytes) and returns the
/// response's contents; `fetch_encode` writes them without copying records.
pub async fn handle(shard: &Rc<Shard>, req: FetchRequest, version: i16) -> FetchOutcome {
    let image = shard.image();
    let by_id = version >= 13;
    let mut requested: Vec<SessionPartition> = Vec::new();
    for ft in &req.topics {
        let meta = if by_id {
            image.topic_by_id(ft.topic_id.as_u128())
        } else {
            image.topic(ft.topic.0.as_str())
        };
        for fp in &ft.partitions {
            requested.push(SessionPartition {
                topic: meta
                    .map(|m| m.name.clone())
                    .unwrap_or_else(|| ft.topic.0.to_string()),
                topic_id: meta.map(|m| Uuid::from_u128(m.id)).unwrap_or(ft.topic_id),
                partition: fp.partition,
                fetch_offset: fp.fetch_offset,
                max_bytes: fp.partition_max_bytes,
                high_watermark: -2,
                log_start_offset: -2,
            });
        }
    }
    let same = |a: &SessionPartition, b: &SessionPartition| {
        a.partition == b.partition
            && if by_id {
                a.topic_id == b.topic_id
            } else {
                a.topic == b.topic
            }
    };
    let fail = |code| FetchOutcome {
        error_code: code,
        session_id: 0,
        topics: Vec::new(),
    };
    let mode = match (req.session_id, req.session_epoch) {
        (0, -1) => Mode::Sessionless,
        (id, -1) => {
            fetch_session::remove(id);
            Mode::Sessionless
        }
        (id, 0) => {
            if id != 0 {
                fetch_session::remove(id);
            }
            if requested.len() > fetch_session::SESSION_PARTITIONS_MAX {
                Mode::Sessionless
            } else {
                Mode::New
            }
        }
        (0, _) => return fail(fetch_session::FETCH_SESSION_ID_NOT_FOUND),
        (id, epoch) => match fetch_session::take(id, epoch) {
            Ok(session) => Mode::Incremental(id, session),
            Err(code) => return fail(code),
        },
    };
    // The partitions to read, and for an incremental fetch which of them the request
    // (re)named: those are answered even without news.
    let (mut parts, touched): (Vec<SessionPartition>, Vec<bool>) = match &mode {
        Mode::Incremental(_, session) => {
            let mut parts = session.partitions.clone();
            let mut touched = vec![false; parts.len()];
            for ft in &req.forgotten_topics_data {
                parts.retain(|p| {
                    let topic_matches = if by_id {
                        p.topic_id == ft.topic_id
                    } else {
                        p.topic == ft.topic.0.as_str()
                    };
                    !(topic_matches && ft.partitions.contains(&p.partition))
                });
            }
            touched.truncate(parts.len());
            for r in requested {
                match parts.iter().position(|p| same(p, &r)) {
                    Some(i) => {
                        parts[i].fetch_offset = r.fetch_offset;
                        parts[i].max_bytes = r.max_bytes;
                        touched[i] = true;
                    }
                    None => {
                        parts.push(r);
                        touched.push(true);
                    }
                }
            }
            (parts, touched)
        }
        _ => {
            let n = requested.len();
            (requested, vec![true; n])
        }
    };
    let node_id = shard.config.node_id;
    let targets: Vec<Target> = parts
        .iter()
        .map(|p| {
            let meta = if by_id {
                image.topic_by_id(p.topic_id.as_u128())
            } else {
                image.topic(&p.topic)
            };
            // In a cluster only the partition's leader serves it.
            let leads = meta.is_none_or(|m| m.leader(p.partition, node_id) == Some(node_id));
            Target {
                topic: p.topic.clone(),
                topic_id: p.topic_id,
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.max_bytes.max(0) as usize,
                owner: meta
                    .filter(|_| leads)
                    .and_then(|m| shard.owner_of(&m.owners, p.partition)),
                unknown_code: if meta.is_none() && by_id {
                    ec::UNKNOWN_TOPIC_ID
                } else if !leads {
                    ec::NOT_LEADER_OR_FOLLOWER
                } else {
                    ec::UNKNOWN_TOPIC_OR_PARTITION
                },
            }
        })
        .collect();
    let incremental = matches!(mode, Mode::Incremental(..));
    let response_max = if req.max_bytes > 0 {
        (req.max_bytes as usize).min(FETCH_RESPONSE_BYTES_MAX)
    } else {
        FETCH_RESPONSE_BYTES_MAX
    };
    let min_bytes = req.min_bytes.max(0) as usize;
    let started = Instant::now();
    let wait = Duration::from_millis((req.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MS_MAX));
    let reads = loop {
        let reads = read_all(shard, &targets, response_max).await;
        let total: usize = reads.iter().map(|r| r.bytes()).sum();
        let errored = reads.iter().any(|r| r.error_code != ec::NONE);
        let elapsed = started.elapsed();
        if total >= min_bytes.max(1) || errored || elapsed >= wait || targets.is_empty() {
            break reads;
        }
        let ends: Vec<i64> = reads.iter().map(|r| r.high_watermark).collect();
        let parked = Instant::now();
        wait_any(shard, &targets, &ends, (wait - elapsed).as_millis() as u64).await;
        metrics::record_stage(StagedApi::Fetch, Stage::LongPoll, parked.elapsed());
        if started.elapsed() >= wait {
            break read_all(shard, &targets, response_max).await;
        }
    };
    let mut total = 0usize;
    let mut topics: Vec<TopicOut> = Vec::new();
    for (i, (t, r)) in targets.iter().zip(reads).enumerate() {
        let bytes = r.bytes();
        let news = bytes > 0
            || r.error_code != ec::NONE
            || r.high_watermark != parts[i].high_watermark
            || r.log_start_offset != parts[i].log_start_offset;
        parts[i].high_watermark = r.high_watermark;
        parts[i].log_start_offset = r.log_start_offset;
        if incremental && !news && !touched[i] {
            continue;
        }
        // The response's max_bytes cuts later partitions off, but the first data always goes
        // (Kafka's rule, so one large batch can never block a consumer).
        shard.metrics.partition_error(FETCH_API_KEY, r.error_code);
        let chunks = if bytes > 0 && (total == 0 || total + bytes <= response_max) {
            total += bytes;
            let records = crate::segment::batch::count_records(&r.chunks);
            ShardMetrics::add(&shard.metrics.records_out, records);
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
    let session_id = match mode {
        Mode::Sessionless => 0,
        Mode::New => fetch_session::create(parts),
        Mode::Incremental(id, mut session) => {
            session.partitions = parts;
            fetch_session::put(id, session);
            id
        }
    };
    FetchOutcome {
        error_code: ec::NONE,
        session_id,
        topics,
    }
}
