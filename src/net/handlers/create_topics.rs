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
use crate::metadata::{validate_topic_name, TopicMeta};
use crate::net::error_code as ec;
use crate::shard::commands::{MetaCommand, MetaReply};
use crate::shard::partition::{validate_topic_config, validate_topic_configs};
use crate::shard::runtime::{commit_meta, new_topic};
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

/// Creates topics that do not exist yet, with the default replication factor.
/// Existing ones answer TOPIC_ALREADY_EXISTS.
pub async fn create_topics(
    shard: &Rc<Shard>,
    wanted: Vec<(String, i32, BTreeMap<String, String>)>,
    validate_only: bool,
) -> Vec<(String, Outcome)> {
    let wanted = wanted.into_iter().map(|(n, p, c)| (n, p, c, -1)).collect();
    create_topics_rf(shard, wanted, validate_only).await
}

/// Like `create_topics`, each topic with a replication factor (-1: the default).
pub async fn create_topics_rf(
    shard: &Rc<Shard>,
    wanted: Vec<(String, i32, BTreeMap<String, String>, i16)>,
    validate_only: bool,
) -> Vec<(String, Outcome)> {
    let nshards = shard.nshards;
    let cluster = shard.config.cluster.is_some();
    let mut results: Vec<(String, Option<Outcome>)> = Vec::new();
    let mut to_create = Vec::new();
    for (name, partitions, configs, rf) in wanted {
        let check = validate_topic_name(&name)
            .map_err(|m| (ec::INVALID_TOPIC_EXCEPTION, m))
            .and_then(|_| {
                if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
                    Err((ec::INVALID_PARTITIONS, format!("number of partitions {partitions} is not within 1..={PARTITIONS_PER_TOPIC_MAX}")))
                } else {
                    Ok(())
                }
            })
            .and_then(|_| match rf {
                -1 | 1 => Ok(()),
                _ if cluster && rf > 1 => Ok(()),
                _ if cluster => Err((
                    ec::INVALID_REPLICATION_FACTOR,
                    format!("replication factor {rf} must be at least 1"),
                )),
                _ => Err((
                    ec::INVALID_REPLICATION_FACTOR,
                    format!("replication factor {rf} is larger than the 1 available broker"),
                )),
            })
            .and_then(|_| {
                configs
                    .iter()
                    .try_for_each(|(k, v)| validate_topic_config(k, v))
                    .and_then(|()| validate_topic_configs(&configs))
                    .map_err(|m| (ec::INVALID_CONFIG, m))
            });
        match check {
            Err(e) => results.push((name, Some(Err(e)))),
            Ok(()) => {
                let rf = if rf == -1 {
                    if cluster {
                        shard.config.default_replication_factor
                    } else {
                        1
                    }
                } else {
                    rf
                };
                to_create.push((new_topic(nshards, &name, partitions as u32, configs), rf));
                results.push((name, None));
            }
        }
    }
    if to_create.is_empty() {
        return results
            .into_iter()
            .map(|(n, r)| (n, r.expect("every topic refused early")))
            .collect();
    }
    let committed = commit_meta(
        shard,
        MetaCommand::CreateTopics {
            topics: to_create,
            validate_only,
        },
    )
    .await;
    let mut committed = match committed {
        Ok(MetaReply::CreateTopics(v)) => v.into_iter(),
        Ok(other) => unreachable!("create topics answered {other:?}"),
        Err(msg) => {
            tracing::error!(error = %msg, "topic creation failed");
            let code = if cluster {
                ec::REQUEST_TIMED_OUT
            } else {
                ec::KAFKA_STORAGE_ERROR
            };
            return results
                .into_iter()
                .map(|(n, r)| (n, r.unwrap_or_else(|| Err((code, msg.clone())))))
                .collect();
        }
    };
    results
        .into_iter()
        .map(|(n, r)| match r {
            Some(r) => (n, r),
            None => {
                let (name, r) = committed
                    .next()
                    .expect("one committed result per topic to create");
                (name, r.map(Arc::new))
            }
        })
        .collect()
}

pub async fn create(
    shard: &Rc<Shard>,
    req: CreateTopicsRequest,
    _version: i16,
) -> CreateTopicsResponse {
    let default_partitions = shard.config.num_partitions as i32;
    let mut wanted = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
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
        wanted.push((name, partitions, configs, t.replication_factor));
    }
    let outcomes = create_topics_rf(shard, wanted, req.validate_only).await;
    let topics = outcomes
        .into_iter()
        .map(|(name, r)| {
            let base = CreatableTopicResult::default().with_name(topic_name(&name));
            match r {
                Ok(t) => base
                    .with_topic_id(Uuid::from_u128(t.id))
                    .with_num_partitions(t.owners.len() as i32)
                    .with_replication_factor(t.replication_factor() as i16),
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
    let wanted = wanted
        .into_iter()
        .map(|(n, id)| (n, format!("{:032x}", id.as_u128())))
        .collect();
    let result = commit_meta(shard, MetaCommand::DeleteTopics { wanted }).await;
    let responses = match result {
        Ok(MetaReply::DeleteTopics(out)) => out
            .into_iter()
            .map(|(name, id, code)| {
                DeletableTopicResult::default()
                    .with_name(name.map(|n| topic_name(&n)))
                    .with_topic_id(Uuid::from_u128(u128::from_str_radix(&id, 16).unwrap_or(0)))
                    .with_error_code(code)
            })
            .collect(),
        Ok(other) => unreachable!("delete topics answered {other:?}"),
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
    let result = commit_meta(
        shard,
        MetaCommand::CreatePartitions {
            wanted,
            validate_only,
            nshards,
        },
    )
    .await;
    let results = match result {
        Ok(MetaReply::CreatePartitions(out)) => out
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
        Ok(other) => unreachable!("create partitions answered {other:?}"),
        Err(msg) => {
            tracing::error!(error = %msg, "create partitions failed");
            Vec::new()
        }
    };
    CreatePartitionsResponse::default().with_results(results)
}
