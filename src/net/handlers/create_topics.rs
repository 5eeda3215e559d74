//! CreateTopics (19) v2–7, DeleteTopics (20) v1–6, CreatePartitions (37) v0–3, and the
//! auto-creation used by Metadata. All go through the metadata log on shard 0.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse,
};
use uuid::Uuid;

use super::{str_bytes, topic_name};
use crate::metadata::{validate_topic_name, MetaEvent, TopicMeta};
use crate::net::error_code as ec;
use crate::shard::partition::validate_topic_config;
use crate::shard::runtime::{commit_meta, new_topic, place_partitions};
use crate::shard::Shard;

pub const CREATE_MIN: i16 = 2;
pub const CREATE_MAX: i16 = 7;
pub const DELETE_MIN: i16 = 1;
pub const DELETE_MAX: i16 = 6;
pub const PARTITIONS_MIN: i16 = 0;
pub const PARTITIONS_MAX: i16 = 3;

/// Upper bound on partitions per topic: each is a directory and open files.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 100_000;

type Outcome = Result<Arc<TopicMeta>, (i16, String)>;

/// Creates topics that do not exist yet. Existing ones answer TOPIC_ALREADY_EXISTS.
pub async fn create_topics(
    shard: &Rc<Shard>,
    wanted: Vec<(String, i32, BTreeMap<String, String>)>,
    validate_only: bool,
) -> Vec<(String, Outcome)> {
    let nshards = shard.nshards;
    let mut results: Vec<(String, Option<Outcome>)> = Vec::new();
    let mut to_create = Vec::new();
    for (name, partitions, configs) in wanted {
        let check = validate_topic_name(&name)
            .map_err(|m| (ec::INVALID_TOPIC_EXCEPTION, m))
            .and_then(|_| {
                if partitions < 1 || partitions > PARTITIONS_PER_TOPIC_MAX {
                    Err((ec::INVALID_PARTITIONS, format!("number of partitions {partitions} is not within 1..={PARTITIONS_PER_TOPIC_MAX}")))
                } else {
                    Ok(())
                }
            })
            .and_then(|_| {
                configs.iter().try_for_each(|(k, v)| validate_topic_config(k, v).map_err(|m| (ec::INVALID_CONFIG, m)))
            });
        match check {
            Err(e) => results.push((name, Some(Err(e)))),
            Ok(()) => {
                to_create.push(new_topic(nshards, &name, partitions as u32, configs));
                results.push((name, None));
            }
        }
    }
    let committed = commit_meta(shard, move |image| {
        let mut events = Vec::new();
        let mut out = Vec::new();
        for t in to_create {
            if let Some(existing) = image.topic(&t.name) {
                out.push((
                    t.name.clone(),
                    Err((
                        ec::TOPIC_ALREADY_EXISTS,
                        format!("topic '{}' already exists", existing.name),
                    )),
                ));
                continue;
            }
            if events
                .iter()
                .any(|e| matches!(e, MetaEvent::CreateTopic { topic } if topic.name == t.name))
            {
                out.push((
                    t.name.clone(),
                    Err((
                        ec::INVALID_REQUEST,
                        "topic named twice in one request".to_string(),
                    )),
                ));
                continue;
            }
            out.push((t.name.clone(), Ok(Arc::new(t.clone()))));
            if !validate_only {
                events.push(MetaEvent::CreateTopic { topic: t });
            }
        }
        (events, out)
    })
    .await;
    let mut committed = match committed {
        Ok(v) => v.into_iter(),
        Err(msg) => {
            tracing::error!(error = %msg, "topic creation failed");
            return results
                .into_iter()
                .map(|(n, r)| {
                    (
                        n,
                        r.unwrap_or_else(|| Err((ec::KAFKA_STORAGE_ERROR, msg.clone()))),
                    )
                })
                .collect();
        }
    };
    results
        .into_iter()
        .map(|(n, r)| match r {
            Some(r) => (n, r),
            None => committed
                .next()
                .expect("one committed result per topic to create"),
        })
        .collect()
}

pub async fn create(
    shard: &Rc<Shard>,
    req: CreateTopicsRequest,
    _version: i16,
) -> CreateTopicsResponse {
    let default_partitions = shard.config.num_partitions as i32;
    let mut immediate = Vec::new();
    let mut wanted = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        if t.replication_factor != -1 && t.replication_factor != 1 {
            immediate.push((
                name,
                Err((
                    ec::INVALID_REPLICATION_FACTOR,
                    format!(
                        "replication factor {} is larger than the 1 available broker",
                        t.replication_factor
                    ),
                )),
            ));
            continue;
        }
        let partitions = if t.num_partitions == -1 {
            if t.assignments.is_empty() {
                default_partitions
            } else {
                t.assignments.len() as i32
            }
        } else {
            t.num_partitions
        };
        let configs = t
            .configs
            .into_iter()
            .filter_map(|c| c.value.map(|v| (c.name.to_string(), v.to_string())))
            .collect();
        wanted.push((name, partitions, configs));
    }
    let mut outcomes = create_topics(shard, wanted, req.validate_only).await;
    outcomes.extend(immediate);
    let topics = outcomes
        .into_iter()
        .map(|(name, r)| {
            let base = CreatableTopicResult::default().with_name(topic_name(&name));
            match r {
                Ok(t) => base
                    .with_topic_id(Uuid::from_u128(t.id))
                    .with_num_partitions(t.owners.len() as i32)
                    .with_replication_factor(1),
                Err((code, msg)) => base
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&msg)))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1),
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

pub async fn delete(
    shard: &Rc<Shard>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v6 names topics in `topics` (by name or id); older versions in `topic_names`.
    let mut wanted: Vec<(Option<String>, Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), Uuid::nil()))
        .collect();
    if version >= 6 {
        wanted = req
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect();
    }
    let result = commit_meta(shard, move |image| {
        let mut events = Vec::new();
        let mut out = Vec::new();
        for (name, id) in wanted {
            let found = match &name {
                Some(n) => image.topic(n).cloned(),
                None => image.topic_by_id(id.as_u128()).cloned(),
            };
            match found {
                Some(t) if !t.internal => {
                    out.push((Some(t.name.clone()), Uuid::from_u128(t.id), ec::NONE));
                    events.push(MetaEvent::DeleteTopic {
                        name: t.name.clone(),
                    });
                }
                Some(t) => out.push((
                    Some(t.name.clone()),
                    Uuid::from_u128(t.id),
                    ec::INVALID_TOPIC_EXCEPTION,
                )),
                None => {
                    let code = if name.is_some() {
                        ec::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        ec::UNKNOWN_TOPIC_ID
                    };
                    out.push((name, id, code));
                }
            }
        }
        (events, out)
    })
    .await;
    let responses = match result {
        Ok(out) => out
            .into_iter()
            .map(|(name, id, code)| {
                DeletableTopicResult::default()
                    .with_name(name.map(|n| topic_name(&n)))
                    .with_topic_id(id)
                    .with_error_code(code)
            })
            .collect(),
        Err(msg) => {
            tracing::error!(error = %msg, "topic deletion failed");
            Vec::new()
        }
    };
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    shard: &Rc<Shard>,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let nshards = shard.nshards;
    let validate_only = req.validate_only;
    let wanted: Vec<(String, i32)> = req
        .topics
        .iter()
        .map(|t| (t.name.0.to_string(), t.count))
        .collect();
    let result = commit_meta(shard, move |image| {
        let mut events = Vec::new();
        let mut out = Vec::new();
        for (name, count) in wanted {
            let r = match image.topic(&name) {
                None => Err((
                    ec::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("topic '{name}' does not exist"),
                )),
                Some(t) if count <= t.owners.len() as i32 => Err((
                    ec::INVALID_PARTITIONS,
                    format!(
                        "topic has {} partitions; the new count {count} must be larger",
                        t.owners.len()
                    ),
                )),
                Some(_) if count > PARTITIONS_PER_TOPIC_MAX => Err((
                    ec::INVALID_PARTITIONS,
                    format!("at most {PARTITIONS_PER_TOPIC_MAX} partitions"),
                )),
                Some(t) => {
                    let have = t.owners.len() as u32;
                    let owners = place_partitions(nshards, have, count as u32 - have, &name);
                    if !validate_only {
                        events.push(MetaEvent::AddPartitions {
                            name: name.clone(),
                            owners,
                        });
                    }
                    Ok(())
                }
            };
            out.push((name, r));
        }
        (events, out)
    })
    .await;
    let results = match result {
        Ok(out) => out
            .into_iter()
            .map(|(name, r)| {
                let base = CreatePartitionsTopicResult::default().with_name(topic_name(&name));
                match r {
                    Ok(()) => base,
                    Err((code, msg)) => base
                        .with_error_code(code)
                        .with_error_message(Some(str_bytes(&msg))),
                }
            })
            .collect(),
        Err(msg) => {
            tracing::error!(error = %msg, "create partitions failed");
            Vec::new()
        }
    };
    CreatePartitionsResponse::default().with_results(results)
}
