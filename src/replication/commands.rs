//! Metadata changes as data: a `MetaCommand` is decided against the current image into
//! the events to append plus a reply. On a single node shard 0 decides; in a cluster the
//! metadata (Raft) leader does, so a command from any broker is forwarded to it as JSON.
//! Deciding only where the latest image is, under one lock, keeps check-then-create
//! atomic (two concurrent creates of one name: one wins, one is told it exists).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kafka_error as ec;
use crate::metadata::{BrokerMeta, Image, MetaEvent, PartitionState, TopicMeta};
use crate::replication::{controller, placement};
use crate::shard::partition::{validate_topic_config, validate_topic_configs};

pub type Failure = (i16, String);
/// Resource type, name, and the config change (key → Some(value) to set, None to delete).
pub type ConfigChange = (
    i8,
    String,
    Result<BTreeMap<String, Option<String>>, Failure>,
);

pub const RESOURCE_TOPIC: i8 = 2;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Topics with their shard tables already placed (by the requesting broker) and
    /// their replication factor (-1: already resolved to the default by the requester).
    CreateTopics {
        topics: Vec<(TopicMeta, i16)>,
        validate_only: bool,
    },
    /// (name, or the topic id as 32 hex digits when no name is given).
    DeleteTopics {
        wanted: Vec<(Option<String>, String)>,
    },
    CreatePartitions {
        wanted: Vec<(String, i32)>,
        validate_only: bool,
        nshards: usize,
    },
    SetConfigs {
        changes: Vec<ConfigChange>,
        replace: bool,
        validate_only: bool,
    },
    RegisterBroker(BrokerMeta),
    /// The metadata leader's periodic failure check (`replication::controller`).
    CheckBrokers,
    /// A partition leader asks to change the in-sync set (Kafka's AlterPartition):
    /// refused unless `leader` still leads at `leader_epoch`.
    AlterPartition {
        topic: String,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        isr: Vec<i32>,
    },
    /// Broker `id` (the process registered with `incarnation`) is shutting down and
    /// asks to give up its leaderships and in-sync memberships first
    /// (`replication::controller::controlled_shutdown`).
    ControlledShutdown {
        id: i32,
        incarnation: u64,
    },
    /// Gives a metadata log without a cluster id one (a single node's first start, or a
    /// data dir from before ids were stored).
    EnsureClusterId,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MetaReply {
    CreateTopics(Vec<(String, Result<TopicMeta, Failure>)>),
    /// (name, id as hex, error code).
    DeleteTopics(Vec<(Option<String>, String, i16)>),
    CreatePartitions(Vec<(String, Result<(), Failure>)>),
    SetConfigs(Vec<(i8, String, i16, Option<String>)>),
    /// The partition's state after the change.
    AlterPartition(Result<PartitionState, Failure>),
    /// How many leaderships the broker gave up, or why it was refused.
    ControlledShutdown(Result<usize, String>),
    /// Registered, or refused (`DUPLICATE_BROKER_REGISTRATION`: another process with
    /// the node id is live).
    RegisterBroker(Result<(), Failure>),
    Done,
}

impl MetaCommand {
    /// The events this command appends to `image` and what its caller is told.
    /// `placement`: `None` on a single node; in a cluster, the brokers new replicas
    /// may go to (registered and alive, sorted).
    pub fn decide(self, image: &Image, placement: Option<&[i32]>) -> (Vec<MetaEvent>, MetaReply) {
        match self {
            MetaCommand::CreateTopics {
                topics,
                validate_only,
            } => create_topics(image, placement, topics, validate_only),
            MetaCommand::DeleteTopics { wanted } => delete_topics(image, wanted),
            MetaCommand::CreatePartitions {
                wanted,
                validate_only,
                nshards,
            } => create_partitions(image, placement, wanted, validate_only, nshards),
            MetaCommand::SetConfigs {
                changes,
                replace,
                validate_only,
            } => set_configs(image, changes, replace, validate_only),
            MetaCommand::RegisterBroker(b) => {
                let mut events = Vec::new();
                match image.brokers.get(&b.id) {
                    Some(old) if *old == b => {}
                    // Restarted: out of every in-sync set and leadership it had.
                    Some(old) if old.incarnation != b.incarnation => {
                        let live: Vec<i32> = placement
                            .unwrap_or(&[])
                            .iter()
                            .copied()
                            .filter(|id| *id != b.id)
                            .collect();
                        events.extend(controller::partition_changes(image, &live));
                        events.push(MetaEvent::RegisterBroker { broker: b });
                    }
                    _ => events.push(MetaEvent::RegisterBroker { broker: b }),
                }
                // A cluster gets its id with the first registration its leader decides
                // (one that changes something: a repeat decides nothing).
                if image.cluster_id.is_none() && !events.is_empty() {
                    events.push(MetaEvent::SetClusterId {
                        id: crate::metadata::new_cluster_id(),
                    });
                }
                (events, MetaReply::RegisterBroker(Ok(())))
            }
            MetaCommand::EnsureClusterId => {
                let events = match image.cluster_id {
                    Some(_) => Vec::new(),
                    None => vec![MetaEvent::SetClusterId {
                        id: crate::metadata::new_cluster_id(),
                    }],
                };
                (events, MetaReply::Done)
            }
            MetaCommand::CheckBrokers => (
                controller::check_brokers(image, placement.unwrap_or(&[])),
                MetaReply::Done,
            ),
            MetaCommand::AlterPartition {
                topic,
                partition,
                leader,
                leader_epoch,
                isr,
            } => alter_partition(image, topic, partition, leader, leader_epoch, isr),
            MetaCommand::ControlledShutdown { id, incarnation } => {
                let (events, r) = controller::controlled_shutdown(
                    image,
                    id,
                    incarnation,
                    placement.unwrap_or(&[]),
                );
                (events, MetaReply::ControlledShutdown(r))
            }
        }
    }
}

/// Why registering `b` is refused, given the incarnations of its node id heard from
/// within the broker session timeout (`live`): another process with that id runs and
/// reaches the quorum (Kafka's DUPLICATE_BROKER_REGISTRATION). A registered process in
/// controlled shutdown is going and does not count; nor does `b`'s own incarnation.
/// The caller decides how long a refusal is final: a crashed process stays "live"
/// until the session timeout has passed.
pub fn duplicate_registration(image: &Image, b: &BrokerMeta, live: &[u64]) -> Option<Failure> {
    let registered = image.brokers.get(&b.id);
    let leaving = |inc: u64| {
        image.shutting_down.contains(&b.id) && registered.is_some_and(|r| r.incarnation == inc)
    };
    let others: Vec<u64> = live
        .iter()
        .copied()
        .filter(|inc| *inc != b.incarnation && !leaving(*inc))
        .collect();
    if others.is_empty() {
        return None;
    }
    let from = match registered.filter(|r| others.contains(&r.incarnation)) {
        Some(r) => format!("registered from {}:{}", r.host, r.port),
        None => "connected to the metadata quorum, not registered yet".to_string(),
    };
    Some((
        ec::DUPLICATE_BROKER_REGISTRATION,
        format!(
            "node.id {} is already live in the cluster ({from}); another process runs with \
             this id: stop it, or give this broker a node.id of its own",
            b.id
        ),
    ))
}

fn alter_partition(
    image: &Image,
    topic: String,
    partition: i32,
    leader: i32,
    leader_epoch: i32,
    isr: Vec<i32>,
) -> (Vec<MetaEvent>, MetaReply) {
    let state = image
        .topic(&topic)
        .and_then(|t| t.replicas.get(usize::try_from(partition).ok()?));
    let r = match state {
        None => Err((
            ec::UNKNOWN_TOPIC_OR_PARTITION,
            format!("no replicated partition {topic}-{partition}"),
        )),
        Some(st) if st.leader != leader || st.leader_epoch != leader_epoch => Err((
            ec::FENCED_LEADER_EPOCH,
            format!(
                "{topic}-{partition} is led by {} at epoch {}, not {leader} at {leader_epoch}",
                st.leader, st.leader_epoch
            ),
        )),
        Some(st) if !isr.contains(&leader) || isr.iter().any(|r| !st.replicas.contains(r)) => {
            Err((
                ec::INVALID_REQUEST,
                format!("in-sync set {isr:?} must hold the leader and only replicas"),
            ))
        }
        // A broker in controlled shutdown is about to go: it does not join.
        Some(st) => Ok(PartitionState {
            isr: isr
                .into_iter()
                .filter(|r| st.isr.contains(r) || !image.shutting_down.contains(r))
                .collect(),
            ..st.clone()
        }),
    };
    let events = match (&r, state) {
        (Ok(new), Some(old)) if new != old => vec![MetaEvent::ChangePartition {
            name: topic,
            partition,
            state: new.clone(),
        }],
        _ => Vec::new(),
    };
    (events, MetaReply::AlterPartition(r))
}

fn create_topics(
    image: &Image,
    placement: Option<&[i32]>,
    topics: Vec<(TopicMeta, i16)>,
    validate_only: bool,
) -> (Vec<MetaEvent>, MetaReply) {
    let mut events = Vec::new();
    let mut out = Vec::new();
    for (mut t, rf) in topics {
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
        if let Some(ids) = placement {
            // The offsets topic takes what the cluster has (at most its factor).
            let rf = if t.name == crate::metadata::OFFSETS_TOPIC && rf as usize > ids.len() {
                ids.len().max(1) as i16
            } else {
                rf
            };
            if rf < 1 || rf as usize > ids.len() {
                out.push((
                    t.name.clone(),
                    Err((
                        ec::INVALID_REPLICATION_FACTOR,
                        format!(
                            "replication factor {rf} is not within 1..={} (live brokers)",
                            ids.len()
                        ),
                    )),
                ));
                continue;
            }
            t.replicas = placement::assign(ids, 0, t.owners.len() as u32, rf as usize, &t.name);
        }
        out.push((t.name.clone(), Ok(t.clone())));
        if !validate_only {
            events.push(MetaEvent::CreateTopic { topic: t });
        }
    }
    (events, MetaReply::CreateTopics(out))
}

fn delete_topics(
    image: &Image,
    wanted: Vec<(Option<String>, String)>,
) -> (Vec<MetaEvent>, MetaReply) {
    let mut events = Vec::new();
    let mut out = Vec::new();
    for (name, id) in wanted {
        let id_num = u128::from_str_radix(&id, 16).unwrap_or(0);
        let found = match &name {
            Some(n) => image.topic(n).cloned(),
            None => image.topic_by_id(id_num).cloned(),
        };
        match found {
            Some(t) if !t.internal => {
                out.push((Some(t.name.clone()), format!("{:032x}", t.id), ec::NONE));
                events.push(MetaEvent::DeleteTopic {
                    name: t.name.clone(),
                });
            }
            Some(t) => out.push((
                Some(t.name.clone()),
                format!("{:032x}", t.id),
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
    (events, MetaReply::DeleteTopics(out))
}

fn create_partitions(
    image: &Image,
    placement: Option<&[i32]>,
    wanted: Vec<(String, i32)>,
    validate_only: bool,
    nshards: usize,
) -> (Vec<MetaEvent>, MetaReply) {
    use super::topics::PARTITIONS_PER_TOPIC_MAX;
    let mut events = Vec::new();
    let mut out = Vec::new();
    let ids = placement.unwrap_or(&[]);
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
            Some(t) if placement.is_some() && t.replication_factor() > ids.len() => Err((
                ec::INVALID_REPLICATION_FACTOR,
                format!(
                    "replication factor {} exceeds the {} live brokers",
                    t.replication_factor(),
                    ids.len()
                ),
            )),
            Some(t) => {
                let have = t.owners.len() as u32;
                let added = count as u32 - have;
                let owners = super::placement::place_partitions(nshards, have, added, &name);
                let replicas = if placement.is_some() {
                    placement::assign(ids, have, added, t.replication_factor(), &name)
                } else {
                    Vec::new()
                };
                if !validate_only {
                    events.push(MetaEvent::AddPartitions {
                        name: name.clone(),
                        owners,
                        replicas,
                    });
                }
                Ok(())
            }
        };
        out.push((name, r));
    }
    (events, MetaReply::CreatePartitions(out))
}

fn set_configs(
    image: &Image,
    changes: Vec<ConfigChange>,
    replace: bool,
    validate_only: bool,
) -> (Vec<MetaEvent>, MetaReply) {
    let mut events = Vec::new();
    let mut out = Vec::new();
    for (rtype, name, change) in changes {
        let r = change.and_then(|mut set| {
            if rtype != RESOURCE_TOPIC {
                return Err((
                    ec::INVALID_REQUEST,
                    "only topic configs can be altered".to_string(),
                ));
            }
            let Some(t) = image.topic(&name) else {
                return Err((
                    ec::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("unknown topic '{name}'"),
                ));
            };
            for (k, v) in &set {
                if let Some(v) = v {
                    validate_topic_config(k, v).map_err(|m| (ec::INVALID_CONFIG, m))?;
                }
            }
            if replace {
                for k in t.configs.keys() {
                    set.entry(k.clone()).or_insert(None);
                }
            }
            let mut after = t.configs.clone();
            for (k, v) in &set {
                match v {
                    Some(v) => after.insert(k.clone(), v.clone()),
                    None => after.remove(k),
                };
            }
            validate_topic_configs(&after).map_err(|m| (ec::INVALID_CONFIG, m))?;
            Ok(set)
        });
        match r {
            Ok(set) => {
                if !validate_only {
                    events.push(MetaEvent::SetConfigs {
                        name: name.clone(),
                        configs: set,
                    });
                }
                out.push((rtype, name, ec::NONE, None));
            }
            Err((code, msg)) => out.push((rtype, name, code, Some(msg))),
        }
    }
    (events, MetaReply::SetConfigs(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_broker_leaves_isrs_and_leaderships_when_it_registers_again() {
        use crate::metadata::PartitionState;
        let b = |incarnation| BrokerMeta {
            id: 1,
            host: "h".into(),
            port: 9092,
            incarnation,
        };
        let mut image = Image::default();
        image.apply(&MetaEvent::RegisterBroker { broker: b(5) });
        let mut t = super::placement::new_topic(1, "t", 1, BTreeMap::new());
        t.replicas = vec![PartitionState {
            replicas: vec![1, 2],
            leader: 1,
            leader_epoch: 3,
            isr: vec![1, 2],
        }];
        image.apply(&MetaEvent::CreateTopic { topic: t });
        let (same, _) = MetaCommand::RegisterBroker(b(5)).decide(&image, Some(&[1, 2]));
        assert!(same.is_empty(), "same process: nothing to change");
        let (events, _) = MetaCommand::RegisterBroker(b(6)).decide(&image, Some(&[1, 2]));
        for e in &events {
            image.apply(e);
        }
        let p = &image.topic("t").unwrap().replicas[0];
        assert_eq!((p.leader, p.leader_epoch, p.isr.clone()), (2, 4, vec![2]));
        assert_eq!(image.brokers[&1].incarnation, 6);
    }

    #[test]
    fn a_registration_is_refused_while_another_process_of_the_id_is_live() {
        let b = |incarnation| BrokerMeta {
            id: 2,
            host: "127.0.0.1".into(),
            port: 9192,
            incarnation,
        };
        let mut image = Image::default();
        image.apply(&MetaEvent::RegisterBroker { broker: b(5) });
        let (code, msg) = duplicate_registration(&image, &b(7), &[5, 7]).expect("refused");
        assert_eq!(code, ec::DUPLICATE_BROKER_REGISTRATION);
        assert!(
            msg.contains("node.id 2 is already live") && msg.contains("127.0.0.1:9192"),
            "{msg}"
        );
        // The previous process is gone (not heard from): a restart registers.
        assert!(duplicate_registration(&image, &b(7), &[7]).is_none());
        // The same process again, or one whose predecessor is in controlled shutdown.
        assert!(duplicate_registration(&image, &b(5), &[5]).is_none());
        image.apply(&MetaEvent::SetBrokerShuttingDown { id: 2 });
        assert!(duplicate_registration(&image, &b(7), &[5]).is_none());
        // A live process that has not registered yet still holds the id.
        let (_, msg) = duplicate_registration(&image, &b(7), &[9]).expect("refused");
        assert!(msg.contains("not registered yet"), "{msg}");
    }

    #[test]
    fn alter_partition_is_refused_for_a_stale_leader_epoch() {
        let mut image = Image::default();
        let st = PartitionState {
            replicas: vec![1, 2, 3],
            leader: 1,
            leader_epoch: 4,
            isr: vec![1, 2, 3],
        };
        image.apply(&MetaEvent::CreateTopic {
            topic: TopicMeta {
                name: "t".into(),
                id: 9,
                owners: vec![0],
                configs: BTreeMap::new(),
                internal: false,
                replicas: vec![st.clone()],
            },
        });
        let alter = |leader, leader_epoch, isr: Vec<i32>| MetaCommand::AlterPartition {
            topic: "t".into(),
            partition: 0,
            leader,
            leader_epoch,
            isr,
        };
        let (events, reply) = alter(1, 4, vec![1, 3]).decide(&image, Some(&[1, 2, 3]));
        assert_eq!(events.len(), 1);
        match reply {
            MetaReply::AlterPartition(Ok(s)) => assert_eq!(s.isr, vec![1, 3]),
            other => panic!("{other:?}"),
        }
        for (leader, epoch, isr) in [(1, 3, vec![1]), (2, 4, vec![2]), (1, 4, vec![2, 3])] {
            let (events, reply) = alter(leader, epoch, isr).decide(&image, None);
            assert!(events.is_empty());
            assert!(
                matches!(reply, MetaReply::AlterPartition(Err(_))),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn commands_and_replies_survive_json() {
        let cmd = MetaCommand::DeleteTopics {
            wanted: vec![(None, format!("{:032x}", u128::MAX - 5))],
        };
        let text = serde_json::to_string(&cmd).unwrap();
        let back: MetaCommand = serde_json::from_str(&text).unwrap();
        let (_, reply) = back.decide(&Image::default(), None);
        let text = serde_json::to_string(&reply).unwrap();
        match serde_json::from_str::<MetaReply>(&text).unwrap() {
            MetaReply::DeleteTopics(v) => assert_eq!(v[0].2, ec::UNKNOWN_TOPIC_ID),
            other => panic!("{other:?}"),
        }
    }
}
