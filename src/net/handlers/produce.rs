//! Produce (0): served v3–11; v0–2 are advertised (min 0: librdkafka before 2.11 turns
//! compression off without it) and answered UNSUPPORTED_VERSION per partition, as Kafka
//! 4.0 does. Record batches stay `Bytes` slices of the request frame all the way to the
//! owning shard's log.

use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, RequestHeader};
use kafka_protocol::protocol::Decodable;

use super::{str_bytes, Reply};
use crate::kafka_error as ec;
use crate::metrics::{ShardMetrics, StagedApi};
use crate::net::connection::Request;
use crate::segment::Durability;
use crate::shard::partition::ProduceOutcome;
use crate::shard::Shard;

pub const MIN_ADVERTISED: i16 = 0;
pub const MIN: i16 = 3;
pub const MAX: i16 = 11;
const PRODUCE_API_KEY: i16 = 0;

/// Returns `None` for acks=0 (Kafka sends no response).
pub async fn handle(
    shard: &Rc<Shard>,
    req: ProduceRequest,
    _version: i16,
) -> Option<ProduceResponse> {
    let acks = req.acks;
    let durability = match acks {
        -1 => Some(Durability::Durable),
        0 | 1 => Some(Durability::Written),
        _ => None,
    };
    let image = shard.image();
    let node_id = shard.config.node_id;
    // Every partition gets a slot; early refusals fill theirs now, the rest are appended
    // on their owning shards (one hop per shard).
    let mut outcomes: Vec<(String, i32, Option<ProduceOutcome>)> = Vec::new();
    let mut work = Vec::new();
    // Records per slot, counted once appended (from batch headers: no record parsing).
    let mut records_in: Vec<u64> = Vec::new();
    for topic in &req.topic_data {
        let name = topic.name.0.to_string();
        let meta = image.topic(&name);
        let max_bytes = meta
            .and_then(|t| t.configs.get("max.message.bytes"))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(shard.config.message_max_bytes as usize);
        // min.insync.replicas matters only for acks=all on a replicated partition.
        let min_isr = meta
            .and_then(|t| t.configs.get("min.insync.replicas"))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1);
        for p in &topic.partition_data {
            let records = p.records.clone().unwrap_or_default();
            let owner = meta.and_then(|t| shard.owner_of(&t.owners, p.index));
            let early = match (durability, owner) {
                (None, _) => Some(ProduceOutcome::error(
                    ec::INVALID_REQUIRED_ACKS,
                    format!("acks={acks} is not -1, 0 or 1"),
                )),
                // Only the group coordinator writes internal topics (through the
                // partition directly, not this handler): a forged offset commit or a
                // record it cannot replay must not get in.
                _ if meta.is_some_and(|t| t.is_internal())
                    || crate::metadata::INTERNAL_TOPICS.contains(&name.as_str()) =>
                {
                    Some(ProduceOutcome::error(
                        ec::INVALID_TOPIC_EXCEPTION,
                        format!("Cannot append to internal topic {name}"),
                    ))
                }
                (_, None) => Some(ProduceOutcome::error(
                    ec::UNKNOWN_TOPIC_OR_PARTITION,
                    "unknown topic or partition",
                )),
                // In a cluster only the partition's leader appends (a single node leads all).
                _ if meta.and_then(|t| t.leader(p.index, node_id)) != Some(node_id) => {
                    Some(ProduceOutcome::error(
                        ec::NOT_LEADER_OR_FOLLOWER,
                        "this broker is not the partition's leader",
                    ))
                }
                _ if records.len() > max_bytes => Some(ProduceOutcome::error(
                    ec::MESSAGE_TOO_LARGE,
                    format!(
                        "{} bytes of records exceed max.message.bytes={max_bytes}",
                        records.len()
                    ),
                )),
                (Some(_), Some(_)) => None,
            };
            records_in.push(if early.is_none() {
                crate::segment::batch::count_records(&[&records])
            } else {
                0
            });
            work.push(match (&early, owner) {
                (None, Some(owner)) => Some((owner, name.clone(), p.index, (records, min_isr))),
                _ => None,
            });
            outcomes.push((name.clone(), p.index, early));
        }
    }
    let d = durability.unwrap_or(Durability::Written);
    let timeout = std::time::Duration::from_millis(req.timeout_ms.max(0) as u64);
    let appended = shard
        .on_partitions_staged(
            Some(StagedApi::Produce),
            work,
            move |p, (records, min_isr)| async move {
                // Controlled shutdown: leadership is about to move; nothing more is
                // appended here, and the client retries at the next leader.
                if p.is_replicated() && crate::replication::shutdown::leaving() {
                    return ProduceOutcome::error(
                        ec::NOT_LEADER_OR_FOLLOWER,
                        "this broker is shutting down; leadership is moving",
                    );
                }
                if acks != -1 || !p.is_replicated() {
                    return p.produce(records, d).await;
                }
                // acks=all on a replicated partition (Kafka's rules): refused before the
                // append while the in-sync set is below min.insync.replicas, answered
                // once the high watermark passes the batch.
                if p.isr_len() < min_isr {
                    return ProduceOutcome::error(
                        ec::NOT_ENOUGH_REPLICAS,
                        format!(
                            "{} in-sync replicas, min.insync.replicas={min_isr}",
                            p.isr_len()
                        ),
                    );
                }
                let mut out = p.produce(records, d).await;
                if out.error_code != ec::NONE {
                    return out;
                }
                match p.wait_high_watermark(out.end_offset, timeout).await {
                    Ok(()) if p.isr_len() < min_isr => ProduceOutcome::error(
                        ec::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                        "the in-sync set shrank below min.insync.replicas",
                    ),
                    Ok(()) => out,
                    Err(code) => {
                        out = ProduceOutcome::error(
                            code,
                            if code == ec::REQUEST_TIMED_OUT {
                                "the in-sync replicas did not confirm in time"
                            } else {
                                "leadership moved before the in-sync replicas confirmed"
                            },
                        );
                        out
                    }
                }
            },
        )
        .await;
    for (slot, outcome) in appended.into_iter().enumerate() {
        if outcomes[slot].2.is_none() {
            outcomes[slot].2 = Some(outcome.unwrap_or_else(|| {
                ProduceOutcome::error(ec::UNKNOWN_TOPIC_OR_PARTITION, "partition not open")
            }));
        }
    }
    let m = &shard.metrics;
    for (slot, (_, _, o)) in outcomes.iter().enumerate() {
        match o {
            Some(o) if o.error_code == ec::NONE => {
                ShardMetrics::add(&m.records_in, records_in[slot])
            }
            Some(o) => m.partition_error(PRODUCE_API_KEY, o.error_code),
            None => {}
        }
    }
    if acks == 0 {
        return None;
    }
    let mut responses: Vec<TopicProduceResponse> = Vec::new();
    for (name, index, o) in outcomes {
        let o = o.unwrap_or_else(|| ProduceOutcome::error(ec::UNKNOWN_SERVER_ERROR, "no outcome"));
        let part = PartitionProduceResponse::default()
            .with_index(index)
            .with_error_code(o.error_code)
            .with_base_offset(o.base_offset)
            .with_log_append_time_ms(o.log_append_time_ms)
            .with_log_start_offset(o.log_start_offset)
            .with_error_message(o.error_message.as_deref().map(str_bytes));
        match responses.iter_mut().find(|t| t.name.0.as_str() == name) {
            Some(t) => t.partition_responses.push(part),
            None => responses.push(
                TopicProduceResponse::default()
                    .with_name(super::topic_name(&name))
                    .with_partition_responses(vec![part]),
            ),
        }
    }
    Some(ProduceResponse::default().with_responses(responses))
}

/// Produce v0–2: their request body is v3's without the leading transactional id, so it
/// decodes as v3 once a null id is put in front; the response is written by hand.
pub fn legacy_unsupported(req: &Request) -> Reply {
    let mut frame = req.frame.clone();
    let parsed = (|| {
        RequestHeader::decode(&mut frame, 1).ok()?;
        let mut v3 = BytesMut::with_capacity(frame.len() + 2);
        v3.put_i16(-1);
        v3.put_slice(&frame);
        ProduceRequest::decode(&mut v3.freeze(), 3).ok()
    })();
    let Some(produce) = parsed else {
        crate::warn_limited!(
            version = req.api_version,
            "closing connection: malformed legacy produce"
        );
        return Reply::Close;
    };
    if produce.acks == 0 {
        return Reply::Nothing;
    }
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32(req.correlation_id);
    out.put_i32(produce.topic_data.len() as i32);
    for t in &produce.topic_data {
        let name = t.name.0.as_str().as_bytes();
        out.put_i16(name.len() as i16);
        out.put_slice(name);
        out.put_i32(t.partition_data.len() as i32);
        for p in &t.partition_data {
            out.put_i32(p.index);
            out.put_i16(ec::UNSUPPORTED_VERSION);
            out.put_i64(-1); // base offset
            if req.api_version >= 2 {
                out.put_i64(-1); // log append time
            }
        }
    }
    if req.api_version >= 1 {
        out.put_i32(0); // throttle time
    }
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Reply::Frame(out)
}
