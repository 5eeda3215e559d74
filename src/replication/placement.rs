//! Replica placement for new partitions (Kafka's rack-unaware assignment): partition
//! p's first replica (its preferred leader) is broker `(start + p) % n`, so leaders
//! spread round robin; followers follow at a shift that changes every `n` partitions,
//! so the same broker pairs are not always together.

use std::collections::BTreeMap;

use crate::metadata::{PartitionState, TopicMeta};

/// Replica sets for partitions `first..first + count` over `brokers` (sorted ids,
/// `rf <= brokers.len()`). `topic` seeds the starting broker, so many one-partition
/// topics do not all lead on the same broker.
pub fn assign(
    brokers: &[i32],
    first: u32,
    count: u32,
    rf: usize,
    topic: &str,
) -> Vec<PartitionState> {
    let n = brokers.len();
    assert!(
        rf >= 1 && rf <= n,
        "replication factor {rf} with {n} brokers"
    );
    let seed = crc32c::crc32c(topic.as_bytes()) as usize;
    let start = seed % n;
    let shift0 = (seed / n) % n.max(1);
    (first..first + count)
        .map(|p| {
            let p = p as usize;
            let leader_index = (start + p) % n;
            let shift = (shift0 + p / n) % n;
            let mut replicas = vec![brokers[leader_index]];
            for j in 0..rf - 1 {
                // Kafka's replicaIndex: never lands on the leader, distinct for j < n-1.
                let idx = (leader_index + 1 + (shift + j) % (n - 1)) % n;
                replicas.push(brokers[idx]);
            }
            PartitionState {
                leader: replicas[0],
                leader_epoch: 0,
                isr: replicas.clone(),
                replicas,
            }
        })
        .collect()
}

/// Assigns new partitions to shards round robin from a per-topic starting shard (a hash
/// of the name), so many one-partition topics still spread over the cores.
pub fn place_partitions(nshards: usize, first_partition: u32, count: u32, topic: &str) -> Vec<u32> {
    let seed = crc32c::crc32c(topic.as_bytes()) as usize;
    (0..count)
        .map(|i| ((seed + (first_partition + i) as usize) % nshards) as u32)
        .collect()
}

pub fn new_topic(
    nshards: usize,
    name: &str,
    partitions: u32,
    configs: BTreeMap<String, String>,
) -> TopicMeta {
    TopicMeta {
        name: name.to_string(),
        id: rand::random::<u128>() | 1,
        owners: place_partitions(nshards, 0, partitions, name),
        configs,
        internal: name.starts_with("__"),
        replicas: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn replicas_are_distinct_and_leaders_spread_evenly() {
        let brokers = [1, 2, 3];
        let parts = assign(&brokers, 0, 30, 3, "orders");
        let mut leaders: HashMap<i32, usize> = HashMap::new();
        for p in &parts {
            let set: HashSet<i32> = p.replicas.iter().copied().collect();
            assert_eq!(set.len(), 3, "{p:?}");
            assert_eq!(p.leader, p.replicas[0]);
            assert_eq!(p.isr, p.replicas);
            *leaders.entry(p.leader).or_default() += 1;
        }
        assert_eq!(
            leaders.values().copied().collect::<HashSet<_>>(),
            HashSet::from([10])
        );
    }

    #[test]
    fn one_broker_and_rf_one_work() {
        assert_eq!(assign(&[7], 0, 2, 1, "t")[1].replicas, vec![7]);
        let p = assign(&[1, 2, 3, 4], 5, 4, 2, "t");
        assert!(p
            .iter()
            .all(|p| p.replicas.len() == 2 && p.replicas[0] != p.replicas[1]));
    }
}
