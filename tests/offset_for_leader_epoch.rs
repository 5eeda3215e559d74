//! OffsetForLeaderEpoch over the wire (KIP-101, KIP-320): a single node stamps epoch 0
//! into what it stores whatever the producer sent, answers from its leader-epoch cache
//! (kept across a SIGKILL in `leader-epoch-checkpoint`), and refuses with Kafka's codes
//! a stale or future current epoch; in a cluster a follower answers
//! NOT_LEADER_OR_FOLLOWER and, after a failover, the old epoch is fenced.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use indexmap::IndexMap;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    FetchRequest, MetadataRequest, OffsetForLeaderEpochRequest, ProduceRequest,
};
use kafka_protocol::records::{Record, TimestampType};

const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const FENCED_LEADER_EPOCH: i16 = 74;
const UNKNOWN_LEADER_EPOCH: i16 = 75;
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(40);

/// One v2 batch of `n` records whose header carries `epoch` as the producer sent it.
fn batch(n: usize, epoch: i32) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: epoch,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: (i as i32).wrapping_sub(1),
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("v{i}"))),
            headers: IndexMap::new(),
        })
        .collect();
    let buf = encode_uncompressed(&records);
    buf
}

fn produce(w: &mut Wire, topic: &str, records: Bytes) {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name_of(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let resp = w.call(&req, 9);
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0, "produce: {:?}", p.error_message);
}

/// Partition leader epochs of the batches stored in partition 0, from offset 0.
fn stored_epochs(w: &mut Wire, topic: &str) -> Vec<i32> {
    let req = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name_of(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let resp = w.call(&req, 11);
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let records = p.records.clone().unwrap_or_default();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 61 <= records.len() {
        let len = 12 + i32::from_be_bytes(records[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push(i32::from_be_bytes(
            records[at + 12..at + 16].try_into().unwrap(),
        ));
        at += len;
    }
    out
}

/// (error, epoch, end offset) for partition `partition` of `topic`.
fn ask(
    w: &mut Wire,
    topic: &str,
    partition: i32,
    current: i32,
    epoch: i32,
    version: i16,
) -> (i16, i32, i64) {
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(topic_name_of(topic))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(current)
                .with_leader_epoch(epoch)])]);
    let resp = w.call(&req, version);
    let p = &resp.topics[0].partitions[0];
    (p.error_code, p.leader_epoch, p.end_offset)
}

#[test]
fn a_single_node_stamps_epoch_zero_and_answers_from_its_epoch_cache_across_a_kill() {
    let mut broker = Broker::start();
    let topic = topic_name("ofle");
    create_topic_blocking(&broker.bootstrap(), &topic, 1);
    let mut w = Wire::connect(&broker.bootstrap());
    // What producers send in the epoch field does not matter: the leader's is stored.
    produce(&mut w, &topic, batch(3, -1));
    produce(&mut w, &topic, batch(2, 17));
    assert_eq!(stored_epochs(&mut w, &topic), vec![0, 0]);
    for version in [2i16, 3, 4] {
        assert_eq!(
            ask(&mut w, &topic, 0, 0, 0, version),
            (0, 0, 5),
            "v{version}"
        );
        assert_eq!(
            ask(&mut w, &topic, 0, -1, 0, version),
            (0, 0, 5),
            "v{version}"
        );
        assert_eq!(
            ask(&mut w, &topic, 0, 0, 1, version),
            (0, -1, -1),
            "v{version}: an epoch newer than any"
        );
        assert_eq!(
            ask(&mut w, &topic, 0, 1, 0, version),
            (UNKNOWN_LEADER_EPOCH, -1, -1),
            "v{version}: the client knows a newer epoch than this broker"
        );
        assert_eq!(
            ask(&mut w, &topic, 1, 0, 0, version).0,
            UNKNOWN_TOPIC_OR_PARTITION
        );
        assert_eq!(
            ask(&mut w, "no-such-topic", 0, 0, 0, version).0,
            UNKNOWN_TOPIC_OR_PARTITION
        );
    }
    let checkpoint = broker
        .data_dir()
        .join("topics")
        .join(format!("{topic}-0"))
        .join("leader-epoch-checkpoint");
    assert_eq!(
        std::fs::read_to_string(&checkpoint).unwrap(),
        "0\n1\n0 0\n",
        "epoch 0 starts at offset 0, written once"
    );
    drop(w);
    broker.kill();
    broker.restart();
    let mut w = Wire::connect(&broker.bootstrap());
    assert_eq!(ask(&mut w, &topic, 0, 0, 0, 4), (0, 0, 5));
    produce(&mut w, &topic, batch(1, 3));
    assert_eq!(stored_epochs(&mut w, &topic), vec![0, 0, 0]);
    assert_eq!(ask(&mut w, &topic, 0, 0, 0, 4), (0, 0, 6));
}

/// partition 0 of `topic` as `bootstrap` reports it: (leader, epoch).
fn leader_of(bootstrap: &str, topic: &str) -> Option<(i32, i32)> {
    let mut wire = Wire::connect(bootstrap);
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name_of(topic)))
        ]))
        .with_allow_auto_topic_creation(false);
    let resp = wire.call(&req, 12);
    let t = resp.topics.first()?;
    let p = t.partitions.first()?;
    (t.error_code == 0 && p.error_code == 0 && p.leader_id.0 >= 0)
        .then_some((p.leader_id.0, p.leader_epoch))
}

#[test]
fn in_a_cluster_followers_refuse_and_a_failover_fences_the_old_epoch() {
    let mut cluster = Cluster::start(3, BrokerOptions::default());
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.bootstrap()).collect();
    cluster.wait_registered();
    let topic = topic_name("ofle-rf3");
    wait_for("the RF=3 topic created", CLUSTER_TIMEOUT, || {
        create_replicated(&addrs[0], &topic, 1, 3).ok()
    });
    let (leader, epoch) = wait_for("every broker to agree on a leader", CLUSTER_TIMEOUT, || {
        let views: BTreeMap<usize, (i32, i32)> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Some((i, leader_of(a, &topic)?)))
            .collect::<Option<_>>()?;
        let first = *views.values().next()?;
        views.values().all(|v| *v == first).then_some(first)
    });
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut w = Wire::connect(&addrs[(follower - 1) as usize]);
    assert_eq!(
        ask(&mut w, &topic, 0, epoch, epoch, 4),
        (NOT_LEADER_OR_FOLLOWER, -1, -1)
    );
    let mut w = Wire::connect(&addrs[(leader - 1) as usize]);
    assert_eq!(ask(&mut w, &topic, 0, epoch, epoch, 4).0, 0);
    assert_eq!(
        ask(&mut w, &topic, 0, epoch + 1, epoch, 4).0,
        UNKNOWN_LEADER_EPOCH
    );

    cluster.node(leader).kill();
    let survivor = addrs[(follower - 1) as usize].clone();
    let (new_leader, new_epoch) = wait_for("a new leader", CLUSTER_TIMEOUT, || {
        leader_of(&survivor, &topic).filter(|(l, e)| *l != leader && *e > epoch)
    });
    let new_addr = addrs[(new_leader - 1) as usize].clone();
    // The new leader may learn of its election a moment after the survivor we asked.
    let mut w = Wire::connect(&new_addr);
    wait_for("the new leader to know its epoch", CLUSTER_TIMEOUT, || {
        (ask(&mut w, &topic, 0, new_epoch, epoch, 4).0 == 0).then_some(())
    });
    assert_eq!(
        ask(&mut w, &topic, 0, epoch, epoch, 4),
        (FENCED_LEADER_EPOCH, -1, -1),
        "a client still on the old epoch is fenced"
    );
}
