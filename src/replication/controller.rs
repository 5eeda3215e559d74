//! The controller's failure handling, as pure decisions over the image (they run inside
//! `MetaCommand::decide` on the metadata leader, under its lock, and commit as events).
//!
//! - A registered broker the leader has not heard from within the session timeout is
//!   fenced: it leaves every in-sync set, and partitions it led get the first live
//!   in-sync replica (replica order) as leader with leader epoch + 1.
//! - No live in-sync replica: the partition goes offline (leader -1, epoch + 1) and
//!   keeps its in-sync set, so the first of those brokers to come back leads it again
//!   (epoch + 1). Never an unclean election: a replica outside the set may lack
//!   acknowledged writes.
//! - A broker that registers with a new incarnation restarted: it lost its in-memory
//!   replication state, so it is treated like a dead one for its partitions (the data
//!   path adds it back to the in-sync sets once it has caught up).
//! - A broker in controlled shutdown (SIGTERM; Kafka's ControlledShutdown, KRaft's
//!   BrokerHeartbeat `wantShutDown`) is handled as if it had died, at once instead of
//!   after the session timeout: it is fenced, leaves every in-sync set, and the
//!   partitions it led move to another in-sync replica. It stays out (no elections, no
//!   in-sync set, no new replicas) until a new process of it registers.

use crate::metadata::{Image, MetaEvent, PartitionState};

/// `state` after the brokers outside `live` are gone, or `None` if nothing changes.
pub fn failover(state: &PartitionState, live: &[i32]) -> Option<PartitionState> {
    let alive = |b: &i32| live.contains(b);
    let mut next = state.clone();
    let live_isr: Vec<i32> = state.isr.iter().copied().filter(alive).collect();
    if live_isr.is_empty() {
        next.leader = -1;
    } else {
        next.isr = live_isr;
        if state.leader < 0 || !alive(&state.leader) || !next.isr.contains(&state.leader) {
            next.leader = state
                .replicas
                .iter()
                .copied()
                .find(|r| next.isr.contains(r))
                // In-sync replicas are replicas; if not, keep order by the set itself.
                .unwrap_or(next.isr[0]);
        }
    }
    if next.leader != state.leader {
        next.leader_epoch = state.leader_epoch + 1;
    }
    (next != *state).then_some(next)
}

/// Every partition's change given the brokers in `live`, as events.
pub fn partition_changes(image: &Image, live: &[i32]) -> Vec<MetaEvent> {
    let mut events = Vec::new();
    for t in image.topics.values() {
        for (p, state) in t.replicas.iter().enumerate() {
            if let Some(state) = failover(state, live) {
                events.push(MetaEvent::ChangePartition {
                    name: t.name.clone(),
                    partition: p as i32,
                    state,
                });
            }
        }
    }
    events
}

/// The periodic check: fences registered brokers outside `live`, unfences those back,
/// and moves leadership and in-sync sets accordingly.
pub fn check_brokers(image: &Image, live: &[i32]) -> Vec<MetaEvent> {
    let mut events: Vec<MetaEvent> = image
        .brokers
        .keys()
        .filter_map(|id| {
            let alive = live.contains(id);
            (alive == image.fenced.contains(id)).then_some(MetaEvent::SetBrokerFenced {
                id: *id,
                fenced: !alive,
            })
        })
        .collect();
    events.extend(partition_changes(image, live));
    events
}

/// The controller's answer to broker `id` (process `incarnation`) asking to shut
/// down, given the other brokers in `live`: the events to commit and how many
/// leaderships move, or why it is refused (not registered as that process).
pub fn controlled_shutdown(
    image: &Image,
    id: i32,
    incarnation: u64,
    live: &[i32],
) -> (Vec<MetaEvent>, Result<usize, String>) {
    match image.brokers.get(&id) {
        Some(b) if b.incarnation == incarnation => {}
        _ => {
            return (
                Vec::new(),
                Err(format!("broker {id} is not registered as this process")),
            )
        }
    }
    let others: Vec<i32> = live.iter().copied().filter(|b| *b != id).collect();
    let mut events = Vec::new();
    if !image.shutting_down.contains(&id) {
        events.push(MetaEvent::SetBrokerShuttingDown { id });
    }
    let changes = check_brokers(image, &others);
    let moved = changes
        .iter()
        .filter(|e| {
            matches!(e, MetaEvent::ChangePartition { name, partition, state }
                if image.topic(name).and_then(|t| t.replicas.get(*partition as usize))
                    .is_some_and(|old| old.leader == id && state.leader != id))
        })
        .count();
    events.extend(changes);
    (events, Ok(moved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn st(replicas: &[i32], leader: i32, epoch: i32, isr: &[i32]) -> PartitionState {
        PartitionState {
            replicas: replicas.to_vec(),
            leader,
            leader_epoch: epoch,
            isr: isr.to_vec(),
        }
    }

    #[test]
    fn dead_leader_is_replaced_by_first_live_isr_member_in_replica_order() {
        let s = st(&[1, 2, 3], 1, 4, &[3, 1, 2]);
        assert_eq!(failover(&s, &[2, 3]), Some(st(&[1, 2, 3], 2, 5, &[3, 2])));
    }

    #[test]
    fn dead_follower_leaves_isr_without_epoch_bump() {
        let s = st(&[1, 2, 3], 1, 4, &[1, 2, 3]);
        assert_eq!(failover(&s, &[1, 2]), Some(st(&[1, 2, 3], 1, 4, &[1, 2])));
        assert_eq!(failover(&s, &[1, 2, 3]), None);
    }

    #[test]
    fn never_elects_out_of_the_isr_and_recovers_when_an_isr_member_returns() {
        let s = st(&[1, 2, 3], 1, 4, &[1]);
        // Only non-ISR replicas are live: offline, ISR kept.
        let off = failover(&s, &[2, 3]).unwrap();
        assert_eq!(off, st(&[1, 2, 3], -1, 5, &[1]));
        assert_eq!(failover(&off, &[2, 3]), None, "stays offline");
        assert_eq!(failover(&off, &[1, 2]), Some(st(&[1, 2, 3], 1, 6, &[1])));
    }

    #[test]
    fn check_fences_and_unfences_registered_brokers() {
        let mut image = Image::default();
        for id in 1..=3 {
            image.brokers.insert(
                id,
                crate::metadata::BrokerMeta {
                    id,
                    host: "h".into(),
                    port: 1,
                    incarnation: 0,
                },
            );
        }
        image.fenced.insert(3);
        image.topics.insert(
            "t".into(),
            Arc::new(crate::metadata::TopicMeta {
                name: "t".into(),
                id: 1,
                owners: vec![0],
                configs: BTreeMap::new(),
                internal: false,
                replicas: vec![st(&[2, 3, 1], 2, 0, &[2, 3, 1])],
            }),
        );
        let events = check_brokers(&image, &[1, 3]);
        let text = serde_json::to_string(&events).unwrap();
        assert!(text.contains(r#"{"type":"SetBrokerFenced","id":2,"fenced":true}"#));
        assert!(text.contains(r#"{"type":"SetBrokerFenced","id":3,"fenced":false}"#));
        assert!(
            text.contains(r#""leader":3,"leader_epoch":1,"isr":[3,1]"#),
            "{text}"
        );
        for e in &events {
            image.apply(e);
        }
        assert!(check_brokers(&image, &[1, 3]).is_empty(), "a fixed point");
    }

    #[test]
    fn controlled_shutdown_moves_leadership_and_fences_at_once() {
        let mut image = Image::default();
        for id in 1..=3 {
            image.brokers.insert(
                id,
                crate::metadata::BrokerMeta {
                    id,
                    host: "h".into(),
                    port: 1,
                    incarnation: 7,
                },
            );
        }
        let topic = |replicas| {
            Arc::new(crate::metadata::TopicMeta {
                name: "t".into(),
                id: 1,
                owners: vec![0, 0],
                configs: BTreeMap::new(),
                internal: false,
                replicas,
            })
        };
        image.topics.insert(
            "t".into(),
            topic(vec![st(&[1, 2, 3], 1, 4, &[1, 2, 3]), st(&[1], 1, 0, &[1])]),
        );
        let (none, refused) = controlled_shutdown(&image, 1, 8, &[1, 2, 3]);
        assert!(
            none.is_empty() && refused.is_err(),
            "another process of broker 1"
        );
        let (events, moved) = controlled_shutdown(&image, 1, 7, &[1, 2, 3]);
        assert_eq!(moved, Ok(2));
        for e in &events {
            image.apply(e);
        }
        let t = image.topic("t").unwrap();
        assert_eq!(t.replicas[0], st(&[1, 2, 3], 2, 5, &[2, 3]));
        // Its only in-sync replica is leaving: offline, never an unclean election.
        assert_eq!(t.replicas[1], st(&[1], -1, 1, &[1]));
        assert!(image.fenced.contains(&1) && image.shutting_down.contains(&1));
        // Asking again (a lost reply) changes nothing.
        assert!(controlled_shutdown(&image, 1, 7, &[2, 3]).0.is_empty());
        // A new process of broker 1 registers: no longer leaving.
        image.apply(&MetaEvent::RegisterBroker {
            broker: crate::metadata::BrokerMeta {
                id: 1,
                host: "h".into(),
                port: 1,
                incarnation: 9,
            },
        });
        assert!(!image.shutting_down.contains(&1));
    }
}
