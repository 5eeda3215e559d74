//! Creating topics: validation of names, partition counts, replication factors and
//! configs, then one metadata commit for all of them. Used by the CreateTopics and
//! Metadata (auto-create) handlers and by coordinators creating their internal topics.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use super::apply::commit_meta;
use super::commands::{MetaCommand, MetaReply};
use super::placement::new_topic;
use crate::kafka_error as ec;
use crate::metadata::{validate_topic_name, TopicMeta};
use crate::shard::partition::{validate_topic_config, validate_topic_configs};
use crate::shard::Shard;

/// Upper bound on partitions per topic: each is a directory and open files.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 100_000;

pub type Outcome = Result<Arc<TopicMeta>, (i16, String)>;

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
