//! Metadata (3) v0–12: the brokers, the metadata leader as controller, and each
//! partition's leader, replicas and in-sync set (on a single node: this broker, for
//! everything). Unknown topics are created when the client allows it and
//! `auto.create.topics.enable` is on.

use std::rc::Rc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use uuid::Uuid;

use super::{str_bytes, topic_name};
use crate::kafka_error as ec;
use crate::metadata::{BrokerMeta, Image, TopicMeta};
use crate::replication::topics::create_topics;
use crate::shard::Shard;

pub const MIN: i16 = 0;
pub const MAX: i16 = 12;

/// What clients are told until the metadata log has a cluster id (a cluster whose
/// quorum has not decided one yet).
const CLUSTER_ID_UNDECIDED: &str = "cnVubmVsLXNpbmdsZS0w";

/// The cluster id clients are told.
pub fn cluster_id(shard: &Shard) -> String {
    shard
        .image()
        .cluster_id
        .clone()
        .unwrap_or_else(|| CLUSTER_ID_UNDECIDED.to_string())
}

/// Authorized-operations bit fields (v8+ when the client asks): with no authorizer,
/// Kafka reports every operation the resource type supports. The -2^31 default means
/// "not requested" and must not be sent to a client that asked: kafka-python decodes
/// it as operation 31 and fails ("31 is not a valid ACLOperation").
/// Topic: READ(3) WRITE(4) CREATE(5) DELETE(6) ALTER(7) DESCRIBE(8) DESCRIBE_CONFIGS(10) ALTER_CONFIGS(11).
pub const TOPIC_OPERATIONS_ALL: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// Cluster: CREATE(5) ALTER(7) DESCRIBE(8) CLUSTER_ACTION(9) DESCRIBE_CONFIGS(10)
/// ALTER_CONFIGS(11) IDEMPOTENT_WRITE(12).
pub const CLUSTER_OPERATIONS_ALL: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

pub fn topic_response(node_id: i32, image: &Image, t: &TopicMeta) -> MetadataResponseTopic {
    let ids = |v: &[i32]| v.iter().map(|b| BrokerId(*b)).collect::<Vec<_>>();
    let partitions = (0..t.owners.len() as i32)
        .map(|p| {
            let base = MetadataResponsePartition::default().with_partition_index(p);
            match t.replicas.get(p as usize) {
                // A single node leads everything at epoch 0.
                None => base
                    .with_leader_id(BrokerId(node_id))
                    .with_leader_epoch(0)
                    .with_replica_nodes(vec![BrokerId(node_id)])
                    .with_isr_nodes(vec![BrokerId(node_id)]),
                Some(r) => base
                    .with_error_code(if r.leader < 0 {
                        ec::LEADER_NOT_AVAILABLE
                    } else {
                        ec::NONE
                    })
                    .with_leader_id(BrokerId(r.leader))
                    .with_leader_epoch(r.leader_epoch)
                    .with_replica_nodes(ids(&r.replicas))
                    .with_isr_nodes(ids(&r.isr))
                    .with_offline_replicas(
                        r.replicas
                            .iter()
                            .filter(|b| image.fenced.contains(b))
                            .map(|b| BrokerId(*b))
                            .collect(),
                    ),
            }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&t.name)))
        .with_topic_id(Uuid::from_u128(t.id))
        .with_is_internal(t.internal)
        .with_partitions(partitions)
}

pub async fn handle(shard: &Rc<Shard>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let node_id = shard.config.node_id;
    let image = shard.image();
    // v0: an empty list means all topics; v1+: null means all topics.
    let all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let mut topics = Vec::new();
    if all {
        topics.extend(
            image
                .topics
                .values()
                .map(|t| topic_response(node_id, &image, t)),
        );
    } else {
        let auto_create =
            shard.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
        let mut missing = Vec::new();
        for rt in req.topics.iter().flatten() {
            let found = match &rt.name {
                Some(n) => image.topic(n.0.as_str()),
                None => image.topic_by_id(rt.topic_id.as_u128()),
            };
            match (found, &rt.name) {
                (Some(t), _) => topics.push(topic_response(node_id, &image, t)),
                (None, Some(n)) if auto_create => missing.push(n.0.to_string()),
                (None, name) => topics.push(
                    MetadataResponseTopic::default()
                        .with_name(name.clone())
                        .with_topic_id(rt.topic_id)
                        .with_error_code(if name.is_some() {
                            ec::UNKNOWN_TOPIC_OR_PARTITION
                        } else {
                            ec::UNKNOWN_TOPIC_ID
                        }),
                ),
            }
        }
        if !missing.is_empty() {
            let partitions = shard.config.num_partitions as i32;
            let wanted = missing
                .into_iter()
                .map(|n| (n, partitions, Default::default()))
                .collect();
            for (name, outcome) in create_topics(shard, wanted, false).await {
                match outcome {
                    Ok(t) => topics.push(topic_response(node_id, &image, &t)),
                    // Created concurrently by another request: report what exists now.
                    Err((ec::TOPIC_ALREADY_EXISTS, _)) => match shard.image().topic(&name) {
                        Some(t) => topics.push(topic_response(node_id, &image, t)),
                        None => topics.push(error_topic(&name, ec::LEADER_NOT_AVAILABLE)),
                    },
                    Err((code, msg)) => {
                        tracing::info!(topic = %name, error = %msg, "auto-create refused");
                        topics.push(error_topic(&name, code));
                    }
                }
            }
        }
    }
    if version >= 8 && req.include_topic_authorized_operations {
        for t in topics.iter_mut().filter(|t| t.error_code == 0) {
            t.topic_authorized_operations = TOPIC_OPERATIONS_ALL;
        }
    }
    // The cluster field exists in v8–10 only (v11 moved it to DescribeCluster).
    let cluster_ops = if (8..=10).contains(&version) && req.include_cluster_authorized_operations {
        CLUSTER_OPERATIONS_ALL
    } else {
        i32::MIN
    };
    let image = shard.image();
    let brokers = brokers(shard, &image)
        .into_iter()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(str_bytes(&b.host))
                .with_port(i32::from(b.port))
        })
        .collect();
    MetadataResponse::default()
        .with_cluster_authorized_operations(cluster_ops)
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(&cluster_id(shard))))
        .with_controller_id(BrokerId(controller_id(shard)))
        .with_topics(topics)
}

/// The brokers clients may connect to: in a cluster the registered ones the controller
/// has not fenced (this broker always: it is answering), this one on a single node.
pub fn brokers(shard: &Shard, image: &Image) -> Vec<BrokerMeta> {
    let me = BrokerMeta {
        id: shard.config.node_id,
        host: shard.config.advertised_host.clone(),
        port: shard.config.advertised_port,
        incarnation: 0,
    };
    if shard.config.cluster.is_none() {
        return vec![me];
    }
    let mut out: Vec<BrokerMeta> = image
        .brokers
        .values()
        .filter(|b| b.id == me.id || !image.fenced.contains(&b.id))
        .cloned()
        .collect();
    if !image.brokers.contains_key(&me.id) {
        out.push(me);
        out.sort_by_key(|b| b.id);
    }
    out
}

/// The metadata leader in a cluster (-1 while there is none), this broker otherwise.
pub fn controller_id(shard: &Shard) -> i32 {
    if shard.config.cluster.is_none() {
        return shard.config.node_id;
    }
    crate::replication::controller_id().unwrap_or(-1)
}

fn error_topic(name: &str, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(name)))
        .with_error_code(code)
}
