//! DescribeConfigs (32) v1–4, AlterConfigs (33) v0–2, IncrementalAlterConfigs (44) v0–1
//! for topic configs, and a read-only view of the broker's settings. Changes are events
//! in the metadata log; partition logs pick them up when the image is applied.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};

use super::str_bytes;
use crate::kafka_error as ec;
use crate::replication::apply::commit_meta;
use crate::replication::commands::{MetaCommand, MetaReply};
use crate::shard::Shard;

pub const DESCRIBE_MIN: i16 = 1;
pub const DESCRIBE_MAX: i16 = 4;
pub const ALTER_MIN: i16 = 0;
pub const ALTER_MAX: i16 = 2;
pub const INCREMENTAL_MIN: i16 = 0;
pub const INCREMENTAL_MAX: i16 = 1;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
// Config sources (DescribeConfigs v1+).
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// Topic configs with Kafka's defaults, as DescribeConfigs lists them.
pub const TOPIC_DEFAULTS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("compression.type", "producer"),
    ("delete.retention.ms", "86400000"),
    ("flush.messages", "9223372036854775807"),
    ("flush.ms", "9223372036854775807"),
    ("index.interval.bytes", "4096"),
    ("max.compaction.lag.ms", "9223372036854775807"),
    ("max.message.bytes", "1048588"),
    ("message.timestamp.type", "CreateTime"),
    ("min.cleanable.dirty.ratio", "0.5"),
    ("min.compaction.lag.ms", "0"),
    ("min.insync.replicas", "1"),
    ("retention.bytes", "-1"),
    ("retention.ms", "604800000"),
    ("segment.bytes", "1073741824"),
    ("segment.ms", "604800000"),
];

fn entry(name: &str, value: &str, source: i8, read_only: bool) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_config_source(source)
        .with_read_only(read_only)
}

pub fn describe(shard: &Rc<Shard>, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let image = shard.image();
    let c = &shard.config;
    let results = req
        .resources
        .into_iter()
        .map(|r| {
            let wanted = |k: &str| {
                r.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|w| w.as_str() == k))
            };
            let base = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            match r.resource_type {
                RESOURCE_TOPIC => match image.topic(r.resource_name.as_str()) {
                    None => base
                        .with_error_code(ec::UNKNOWN_TOPIC_OR_PARTITION)
                        .with_error_message(Some(str_bytes("unknown topic"))),
                    Some(t) => {
                        let mut configs: Vec<_> = TOPIC_DEFAULTS
                            .iter()
                            .filter(|(k, _)| wanted(k))
                            .map(|(k, d)| match t.configs.get(*k) {
                                Some(v) => entry(k, v, SOURCE_TOPIC, false),
                                None if *k == "max.message.bytes" => entry(
                                    k,
                                    &c.message_max_bytes.to_string(),
                                    SOURCE_STATIC_BROKER,
                                    false,
                                ),
                                None => entry(k, d, SOURCE_DEFAULT, false),
                            })
                            .collect();
                        configs.extend(
                            t.configs
                                .iter()
                                .filter(|(k, _)| {
                                    wanted(k) && !TOPIC_DEFAULTS.iter().any(|(d, _)| d == k)
                                })
                                .map(|(k, v)| entry(k, v, SOURCE_TOPIC, false)),
                        );
                        base.with_configs(configs)
                    }
                },
                RESOURCE_BROKER => {
                    let values = [
                        ("broker.id", c.node_id.to_string()),
                        ("num.partitions", c.num_partitions.to_string()),
                        (
                            "auto.create.topics.enable",
                            c.auto_create_topics.to_string(),
                        ),
                        ("message.max.bytes", c.message_max_bytes.to_string()),
                        (
                            "socket.request.max.bytes",
                            c.socket_request_max_bytes.to_string(),
                        ),
                        ("max.connections", c.connections_max.to_string()),
                        ("log.dirs", c.data_dir.display().to_string()),
                        (
                            "log.cleaner.dedupe.buffer.size",
                            c.log_cleaner_dedupe_buffer_size.to_string(),
                        ),
                    ];
                    base.with_configs(
                        values
                            .iter()
                            .filter(|(k, _)| wanted(k))
                            .map(|(k, v)| entry(k, v, SOURCE_STATIC_BROKER, true))
                            .collect(),
                    )
                }
                _ => base
                    .with_error_code(ec::INVALID_REQUEST)
                    .with_error_message(Some(str_bytes("unsupported resource type"))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// One resource's requested change: key → Some(value) to set, None to delete.
type Change = crate::replication::commands::ConfigChange;

/// Validates and commits config changes; returns (type, name, error code, message).
/// `replace`: AlterConfigs semantics (the given set replaces all topic configs).
async fn apply(
    shard: &Rc<Shard>,
    changes: Vec<Change>,
    replace: bool,
    validate_only: bool,
) -> Vec<(i8, String, i16, Option<String>)> {
    let result = commit_meta(
        shard,
        MetaCommand::SetConfigs {
            changes,
            replace,
            validate_only,
        },
    )
    .await;
    let result = result.map(|r| match r {
        MetaReply::SetConfigs(out) => out,
        other => unreachable!("set configs answered {other:?}"),
    });
    result.unwrap_or_else(|msg| {
        tracing::error!(error = %msg, "config change failed");
        Vec::new()
    })
}

pub async fn alter(shard: &Rc<Shard>, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let changes = req
        .resources
        .into_iter()
        .map(|r| {
            let set = r
                .configs
                .into_iter()
                .map(|c| (c.name.to_string(), c.value.map(|v| v.to_string())))
                .collect();
            (r.resource_type, r.resource_name.to_string(), Ok(set))
        })
        .collect();
    let responses = apply(shard, changes, true, req.validate_only)
        .await
        .into_iter()
        .map(|(t, n, code, msg)| {
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(t)
                .with_resource_name(str_bytes(&n))
                .with_error_code(code)
                .with_error_message(msg.as_deref().map(str_bytes))
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter(
    shard: &Rc<Shard>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    // Operations: 0 SET, 1 DELETE, 2 APPEND, 3 SUBTRACT (list configs; none of ours are).
    let changes = req
        .resources
        .into_iter()
        .map(|r| {
            let mut set = BTreeMap::new();
            let mut bad = None;
            for c in r.configs {
                match c.config_operation {
                    0 => match c.value {
                        Some(v) => {
                            set.insert(c.name.to_string(), Some(v.to_string()));
                        }
                        None => {
                            bad =
                                Some((ec::INVALID_CONFIG, format!("{}: SET needs a value", c.name)))
                        }
                    },
                    1 => {
                        set.insert(c.name.to_string(), None);
                    }
                    op => {
                        bad = Some((
                            ec::INVALID_CONFIG,
                            format!(
                                "{}: operation {op} is not supported for this config",
                                c.name
                            ),
                        ))
                    }
                }
            }
            (
                r.resource_type,
                r.resource_name.to_string(),
                bad.map_or(Ok(set), Err),
            )
        })
        .collect();
    let responses = apply(shard, changes, false, req.validate_only)
        .await
        .into_iter()
        .map(|(t, n, code, msg)| {
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(t)
                .with_resource_name(str_bytes(&n))
                .with_error_code(code)
                .with_error_message(msg.as_deref().map(str_bytes))
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
