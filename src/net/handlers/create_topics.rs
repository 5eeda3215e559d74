//! CreateTopics (19) v2–7, DeleteTopics (20) v1–6, CreatePartitions (37) v0–3, and the
//! auto-creation used by Metadata. All go through the metadata log on shard 0.

use std::rc::Rc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse,
};
use uuid::Uuid;

use super::{str_bytes, topic_name};
use crate::replication::apply::commit_meta;
use crate::replication::commands::{MetaCommand, MetaReply};
use crate::replication::topics::create_topics_rf;
use crate::shard::Shard;

pub const CREATE_MIN: i16 = 2;
pub const CREATE_MAX: i16 = 7;
pub const DELETE_MIN: i16 = 1;
pub const DELETE_MAX: i16 = 6;
pub const PARTITIONS_MIN: i16 = 0;
pub const PARTITIONS_MAX: i16 = 3;

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
