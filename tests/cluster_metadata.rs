//! A three-broker cluster on 127.0.0.1: the metadata is replicated by Raft
//! among the brokers, so every broker answers Metadata alike; losing the metadata
//! leader (SIGKILL) leaves a majority that elects another and keeps changing metadata;
//! the lost broker catches up when it comes back.

mod common;

use std::collections::HashMap;

use common::*;
use kafka_protocol::messages::{FetchRequest, ProduceRequest};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// Produce (acks=1) and Fetch error codes for one partition, sent to exactly `bootstrap`.
fn produce_and_fetch_codes(bootstrap: &str, topic: &str, partition: i32) -> (i16, i16) {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let mut wire = Wire::connect(bootstrap);
    let produce = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name_of(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(record_batch(3)))])]);
    let p = wire.call(&produce, 9);
    let fetch = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name_of(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(0)
                .with_current_leader_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1 << 20)])]);
    let f = wire.call(&fetch, 12);
    (
        p.responses[0].partition_responses[0].error_code,
        f.responses[0].partitions[0].error_code,
    )
}

#[test]
fn three_brokers_agree_on_metadata_survive_losing_the_metadata_leader_and_catch_up() {
    let mut cluster = Cluster::start(3, BrokerOptions::default());
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.bootstrap()).collect();

    // Every broker registers its advertised address and knows the elected leader.
    let expected_brokers: Vec<(i32, String, i32)> = cluster
        .brokers
        .iter()
        .enumerate()
        .map(|(i, b)| (i as i32 + 1, "127.0.0.1".to_string(), b.port() as i32))
        .collect();
    let controller = wait_for(
        "all brokers registered under one controller",
        CLUSTER_TIMEOUT,
        || {
            let views: Vec<_> = addrs.iter().map(|a| raw_cluster_view(a)).collect();
            let c = views[0].0;
            (c > 0 && views.iter().all(|v| v.0 == c && v.1 == expected_brokers)).then_some(c)
        },
    );

    // An RF=3 topic created through broker 2 with a real client ...
    let topic = topic_name("replicated");
    create_replicated(&addrs[1], &topic, 6, 3).expect("create an RF=3 topic");
    // ... is reported identically by all three brokers.
    let view = wait_for("every broker to see the topic", CLUSTER_TIMEOUT, || {
        let views: Vec<_> = addrs.iter().map(|a| topic_view(a, &topic)).collect();
        let first = views[0].clone()?;
        views
            .iter()
            .all(|v| v.as_ref() == Some(&first))
            .then_some(first)
    });
    assert_eq!(view.len(), 6);
    let mut led: HashMap<i32, usize> = HashMap::new();
    for (p, (leader, replicas, isr)) in &view {
        let mut sorted = replicas.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![1, 2, 3],
            "partition {p}: replicas {replicas:?}"
        );
        assert_eq!(
            *leader, replicas[0],
            "partition {p}: the preferred replica leads"
        );
        assert_eq!(
            isr, replicas,
            "partition {p}: a new partition is all in sync"
        );
        *led.entry(*leader).or_default() += 1;
    }
    assert_eq!(
        led.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "leaders spread: {led:?}"
    );

    // Only a partition's leader takes produce and fetch.
    let (leader0, replicas0, _) = view[&0].clone();
    let follower0 = replicas0[1];
    assert_eq!(
        produce_and_fetch_codes(&addrs[(leader0 - 1) as usize], &topic, 0),
        (0, 0)
    );
    assert_eq!(
        produce_and_fetch_codes(&addrs[(follower0 - 1) as usize], &topic, 0),
        (NOT_LEADER_OR_FOLLOWER, NOT_LEADER_OR_FOLLOWER)
    );
    // A client that knows the whole cluster writes every partition through its leader.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let producer: FutureProducer = producer(&cluster.bootstrap_all(), &[("acks", "all")]);
    rt.block_on(async {
        for p in 0..6 {
            let r = FutureRecord::to(&topic).partition(p).payload("x").key("k");
            producer
                .send(r, CLIENT_TIMEOUT)
                .await
                .unwrap_or_else(|(e, _)| panic!("produce to partition {p}: {e}"));
        }
    });
    drop(producer);

    // SIGKILL the metadata leader: the other two elect a new one ...
    cluster.node(controller).kill();
    let survivors: Vec<String> = (1..=3)
        .filter(|id| *id != controller)
        .map(|id| addrs[(id - 1) as usize].clone())
        .collect();
    let new_controller = wait_for("a new metadata leader", CLUSTER_TIMEOUT, || {
        let views: Vec<_> = survivors.iter().map(|a| raw_cluster_view(a).0).collect();
        let c = views[0];
        (c > 0 && c != controller && views.iter().all(|v| *v == c)).then_some(c)
    });
    assert_ne!(new_controller, controller);
    // ... and still change metadata, placing replicas on live brokers only.
    let after = topic_name("after-failover");
    create_replicated(&survivors[0], &after, 4, 2).expect("create a topic after the leader died");
    let after_view = wait_for(
        "the survivors to agree on the new topic",
        CLUSTER_TIMEOUT,
        || {
            let a = topic_view(&survivors[0], &after)?;
            (topic_view(&survivors[1], &after)? == a).then_some(a)
        },
    );
    for (p, (_, replicas, _)) in &after_view {
        assert!(
            !replicas.contains(&controller),
            "partition {p} placed on the dead broker: {replicas:?}"
        );
    }
    assert_eq!(
        create_replicated(&survivors[1], &topic_name("too-wide"), 1, 3),
        Err(RDKafkaErrorCode::InvalidReplicationFactor),
        "RF=3 with two live brokers"
    );

    // The old leader comes back with its data dir and catches up from the new leader
    // (the partitions it led have moved to other in-sync replicas meanwhile).
    cluster.node(controller).restart();
    let back = &addrs[(controller - 1) as usize];
    wait_for("the restarted broker to catch up", CLUSTER_TIMEOUT, || {
        let now = topic_view(&survivors[0], &topic)?;
        (topic_view(back, &after)? == after_view
            && topic_view(back, &topic)? == now
            && raw_cluster_view(back).1 == expected_brokers)
            .then_some(())
    });
    let (c, brokers) = raw_cluster_view(back);
    assert_eq!(
        c, new_controller,
        "the restarted broker follows the new leader"
    );
    assert_eq!(brokers, expected_brokers);
}

/// Every cluster reported the same id ("runnel-single-0"). A cluster's id is made once,
/// by its first metadata leader, kept in the metadata log (so a restart keeps it), and
/// every broker reports it; a single node makes its own at its first start.
#[test]
fn each_cluster_makes_its_own_id_once_and_keeps_it() {
    const OLD_FIXED_ID: &str = "cnVubmVsLXNpbmdsZS0w";
    let mut cluster = Cluster::start(3, BrokerOptions::default());
    cluster.wait_registered();
    let ids: Vec<String> = wait_for("one cluster id on every broker", CLUSTER_TIMEOUT, || {
        let ids: Vec<String> = cluster
            .brokers
            .iter()
            .filter_map(|b| raw_cluster_id(&b.bootstrap()))
            .collect();
        (ids.len() == 3 && ids.iter().all(|i| *i == ids[0] && i != OLD_FIXED_ID)).then_some(ids)
    });
    let id = ids[0].clone();
    // Kafka's format: 16 random bytes, URL-safe base64 without padding.
    assert_eq!(id.len(), 22, "{id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{id}"
    );
    cluster.node(2).restart();
    assert_eq!(
        raw_cluster_id(&cluster.brokers[1].bootstrap()).as_deref(),
        Some(id.as_str())
    );

    let mut single = Broker::start();
    let single_id = raw_cluster_id(&single.bootstrap()).expect("a cluster id");
    assert_eq!(single_id.len(), 22, "{single_id}");
    assert_ne!(single_id, id, "two clusters share an id");
    single.restart();
    assert_eq!(raw_cluster_id(&single.bootstrap()), Some(single_id));
}
