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
use crate::kafka_error as ec;
use crate::metrics::{self, ShardMetrics, Stage, StagedApi};
use crate::net::memory::MemoryBudget;
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
    /// The fetching follower's leader epoch (-1: not given).
    epoch: i32,
}

#[derive(Default)]
struct PartRead {
    error_code: i16,
    chunks: Vec<Bytes>,
    log_start_offset: i64,
    high_watermark: i64,
    /// What this fetcher may read up to: the high watermark for a consumer, the log
    /// end for a follower. Long polls wait for it to move.
    visible_end: i64,
    /// A follower's fetch: `high_watermark` is news to it (answer now).
    hw_news: bool,
}

impl PartRead {
    fn bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }
}

/// Kafka's replica id of a debugging consumer: it may read any replica up to its log end.
pub const DEBUG_REPLICA_ID: i32 = -2;

/// Reads one partition on its owning shard (the caller is on that shard). `replica`:
/// the fetching follower's id, or -1 for a consumer (which reads below the high
/// watermark), or `DEBUG_REPLICA_ID`.
async fn read_local(
    s: &Shard,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    replica: i32,
    epoch: i32,
) -> PartRead {
    let Some(p) = s.partition(topic, partition) else {
        return PartRead {
            error_code: ec::UNKNOWN_TOPIC_OR_PARTITION,
            log_start_offset: -1,
            high_watermark: -1,
            visible_end: -1,
            ..Default::default()
        };
    };
    let start = p.log.log_start_offset();
    if replica >= 0 {
        // A follower's fetch offset is its durable log end: the high watermark moves.
        if let Err(code) = p.follower_fetch(replica, offset, epoch) {
            return PartRead {
                error_code: code,
                log_start_offset: start,
                high_watermark: p.high_watermark(),
                visible_end: -1,
                ..Default::default()
            };
        }
    }
    let hw = p.high_watermark();
    let log_end = p.log.log_end_offset();
    let end = if replica == -1 { hw } else { log_end };
    let hw_news = replica >= 0 && p.follower_hw_news(replica);
    // No allowance left in this response (or nothing new): offsets only.
    if (offset >= end && offset <= log_end) || (max_bytes == 0 && (start..end).contains(&offset)) {
        return PartRead {
            log_start_offset: start,
            high_watermark: hw,
            visible_end: end,
            hw_news,
            ..Default::default()
        };
    }
    let read_started = Instant::now();
    // Consumers read below the high watermark, a single node's included (its written
    // end): batches still in the write buffers would die with the process.
    let read = if replica == -1 {
        p.log.read_below(offset, max_bytes, hw).await
    } else {
        p.log.read(offset, max_bytes).await
    };
    metrics::record_stage(StagedApi::Fetch, Stage::Read, read_started.elapsed());
    match read {
        Ok(r) => PartRead {
            error_code: ec::NONE,
            chunks: r.chunks,
            log_start_offset: r.log_start_offset,
            // Every fetcher is told the high watermark (Kafka's rule), a debugging
            // consumer's too, though it may read past it.
            high_watermark: hw,
            visible_end: end,
            hw_news,
        },
        Err(e @ StorageError::OffsetOutOfRange { .. }) => {
            tracing::debug!(error = %e, "fetch out of range");
            PartRead {
                error_code: ec::OFFSET_OUT_OF_RANGE,
                log_start_offset: start,
                high_watermark: hw,
                visible_end: end,
                ..Default::default()
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "fetch read failed");
            PartRead {
                error_code: e.kafka_error_code(),
                log_start_offset: start,
                high_watermark: hw,
                visible_end: end,
                ..Default::default()
            }
        }
    }
}

/// Reads every target, one hop per owning shard (Redpanda's fetch plan). Each shard
/// reads its partitions in request order while its share of `budget` (the response's
/// max_bytes) lasts, so a fetch never reads (and, from disk, copies) much more than it
/// can send; partitions past the budget report only their offsets and are served next
/// time.
async fn read_all(
    shard: &Rc<Shard>,
    targets: &[Target],
    budget: usize,
    replica: i32,
) -> Vec<PartRead> {
    let mut reads: Vec<PartRead> = targets
        .iter()
        .map(|t| PartRead {
            error_code: t.unknown_code,
            log_start_offset: -1,
            high_watermark: -1,
            visible_end: -1,
            ..Default::default()
        })
        .collect();
    type Item = (usize, String, i32, i64, usize, i32);
    let mut plan: Vec<Vec<Item>> = vec![Vec::new(); shard.nshards];
    for (slot, t) in targets.iter().enumerate() {
        if let Some(owner) = t.owner {
            plan[owner].push((
                slot,
                t.topic.clone(),
                t.partition,
                t.offset,
                t.max_bytes,
                t.epoch,
            ));
        }
    }
    // Shards read at once, so each gets a share of the budget by its partition count:
    // reading the whole budget on every shard read (and, cold, copied) up to one budget
    // per shard that the response then cut.
    let total_items: usize = plan.iter().map(|items| items.len()).sum();
    let hops = plan
        .into_iter()
        .enumerate()
        .filter(|(_, items)| !items.is_empty())
        .map(|(owner, items)| {
            let share = budget / total_items.max(1) * items.len();
            shard.invoke_on_staged(owner, Some(StagedApi::Fetch), move |s| async move {
                let mut left = share;
                let mut out = Vec::with_capacity(items.len());
                for (slot, topic, partition, offset, max_bytes, epoch) in items {
                    let r = read_local(
                        &s,
                        &topic,
                        partition,
                        offset,
                        max_bytes.min(left),
                        replica,
                        epoch,
                    )
                    .await;
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
async fn wait_any(
    shard: &Rc<Shard>,
    targets: &[Target],
    ends: &[i64],
    wait_ms: u64,
    consumer: bool,
) {
    let waits: Vec<_> = targets
        .iter()
        .zip(ends)
        .filter_map(|(t, end)| {
            let owner = t.owner?;
            let (topic, partition, offset) = (t.topic.clone(), t.partition, t.offset.max(*end));
            Some(Box::pin(shard.invoke_on(owner, move |s| async move {
                if let Some(p) = s.partition(&topic, partition) {
                    p.wait_for_data(offset, wait_ms, consumer).await;
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
    let replica = if version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    // Followers give their leader epoch per partition (sessions are not used by them).
    let epochs: std::collections::HashMap<(String, i32), i32> = if replica >= 0 {
        req.topics
            .iter()
            .flat_map(|ft| {
                let name = if by_id {
                    image
                        .topic_by_id(ft.topic_id.as_u128())
                        .map(|m| m.name.clone())
                        .unwrap_or_default()
                } else {
                    ft.topic.0.to_string()
                };
                ft.partitions
                    .iter()
                    .map(move |fp| ((name.clone(), fp.partition), fp.current_leader_epoch))
            })
            .collect()
    } else {
        Default::default()
    };
    let targets: Vec<Target> = parts
        .iter()
        .map(|p| {
            let meta = if by_id {
                image.topic_by_id(p.topic_id.as_u128())
            } else {
                image.topic(&p.topic)
            };
            // In a cluster only the partition's leader serves it (a debugging consumer
            // may read any replica).
            let leads = meta.is_none_or(|m| {
                m.leader(p.partition, node_id) == Some(node_id)
                    || (replica == DEBUG_REPLICA_ID && m.is_replica(p.partition, node_id))
            });
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
                epoch: epochs
                    .get(&(p.topic.clone(), p.partition))
                    .copied()
                    .unwrap_or(-1),
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
    // Each read is sized by the shard's memory budget (`net::memory`); the reservation
    // covers the read until the connection holds the response's real size. A parked
    // long poll holds none.
    let memory = MemoryBudget::of(shard);
    let (reads, reservation) = loop {
        let reservation = memory.reserve_fetch(response_max);
        let reads = read_all(shard, &targets, reservation.bytes(), replica).await;
        let total: usize = reads.iter().map(|r| r.bytes()).sum();
        let errored = reads.iter().any(|r| r.error_code != ec::NONE);
        // A follower is told a moved high watermark at once (Kafka's DelayedFetch does
        // the same): it is what a new leader starts from after a failover.
        let hw_news = reads.iter().any(|r| r.hw_news);
        let elapsed = started.elapsed();
        if total >= min_bytes.max(1) || errored || hw_news || elapsed >= wait || targets.is_empty()
        {
            break (reads, reservation);
        }
        let ends: Vec<i64> = reads.iter().map(|r| r.visible_end).collect();
        drop(reads);
        drop(reservation);
        let parked = Instant::now();
        let left = (wait - elapsed).as_millis() as u64;
        wait_any(shard, &targets, &ends, left, replica == -1).await;
        metrics::record_stage(StagedApi::Fetch, Stage::LongPoll, parked.elapsed());
        if started.elapsed() >= wait {
            let reservation = memory.reserve_fetch(response_max);
            break (
                read_all(shard, &targets, reservation.bytes(), replica).await,
                reservation,
            );
        }
    };
    // A first batch larger than the reservation (KIP-74) is kept only if it fits the
    // budget; otherwise it is dropped, and read again once there is room for it (or
    // nothing else is held), so never-reading fetchers cannot pile up batches.
    let read_bytes: usize = reads.iter().map(|r| r.bytes()).sum();
    let (reads, reservation) = if memory.fits(reservation.bytes(), read_bytes) {
        (reads, reservation)
    } else {
        drop(reads);
        drop(reservation);
        memory.wait_fits(read_bytes).await;
        let reservation = memory.hold(read_bytes);
        let reads = read_all(shard, &targets, read_bytes, replica).await;
        (reads, reservation)
    };
    let response_max = response_max.min(reservation.bytes().max(1));
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
