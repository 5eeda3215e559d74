//! Partition data replication in a three-broker cluster on 127.0.0.1 (issue 7):
//! followers fetch from the leader, acks=all answers once every in-sync replica has
//! the records, consumers read them back, and every replica's log ends where the
//! leader's does with the same bytes. With one follower stopped, the leader drops it
//! from the in-sync set and min.insync.replicas=3 refuses acks=all writes
//! (NOT_ENOUGH_REPLICAS) while acks=1 still works.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, ProduceRequest, TopicName,
};
use kafka_protocol::records::{Record, TimestampType};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Kafka's replica id of a debugging consumer: it may read any replica.
const DEBUG_REPLICA: i32 = -2;
const NOT_ENOUGH_REPLICAS: i16 = 19;
/// replica.lag.time.max.ms for these brokers: a stopped follower leaves the in-sync
/// set within this (plus the check interval).
const LAG_MS: &str = "1500";

fn name(s: &str) -> TopicName {
    topic_name_of(s)
}

/// ListOffsets LATEST as `replica_id` sees it on exactly broker `bootstrap`: a consumer
/// (-1) gets the high watermark from the leader; a debugging consumer gets any
/// replica's log end. (error code, offset).
fn latest(bootstrap: &str, topic: &str, partition: i32, replica_id: i32) -> (i16, i64) {
    let mut wire = Wire::connect(bootstrap);
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(replica_id))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-1)])]);
    let resp = wire.call(&req, 7);
    let p = &resp.topics[0].partitions[0];
    (p.error_code, p.offset)
}

/// Every record batch of one replica's log, read with a debugging consumer's Fetch
/// from exactly broker `bootstrap` (whole batches, as stored).
fn replica_bytes(bootstrap: &str, topic: &str, partition: i32, end: i64) -> Vec<u8> {
    use kafka_protocol::records::RecordBatchDecoder;
    let mut wire = Wire::connect(bootstrap);
    let mut out = Vec::new();
    let mut offset = 0i64;
    while offset < end {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(DEBUG_REPLICA))
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(8 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_current_leader_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(8 << 20)])]);
        let resp = wire.call(&req, 12);
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "debug fetch from {bootstrap} at {offset}");
        let records = p.records.clone().unwrap_or_default();
        assert!(!records.is_empty(), "no records at {offset} below {end}");
        let mut buf = records.clone();
        let set = RecordBatchDecoder::decode(&mut buf).expect("decodable batches");
        let last = set.records.last().expect("records").offset;
        out.extend_from_slice(&records);
        offset = last + 1;
    }
    out
}

/// One record batch (magic 2) with `n` small values.
fn batch(n: usize) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("raw-{i}"))),
            headers: Default::default(),
        })
        .collect();
    let buf = encode_uncompressed(&records);
    buf
}

/// Produce one batch to exactly broker `bootstrap`; the partition's error code.
fn produce_code(bootstrap: &str, topic: &str, partition: i32, acks: i16) -> i16 {
    let mut wire = Wire::connect(bootstrap);
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch(3)))])]);
    let resp = wire.call(&req, 9);
    resp.responses[0].partition_responses[0].error_code
}

fn start_cluster() -> Cluster {
    let mut options = BrokerOptions::default();
    options.extra_args = vec!["--replica-lag-time-max-ms".into(), LAG_MS.into()];
    let cluster = Cluster::start(3, options);
    cluster.wait_registered();
    cluster
}

/// Waits until every broker reports the topic alike; returns partition 0's
/// (leader, replicas).
fn wait_topic(addrs: &[String], topic: &str) -> (i32, Vec<i32>) {
    let view = wait_for("every broker to see the topic", CLUSTER_TIMEOUT, || {
        let views: Vec<_> = addrs.iter().map(|a| topic_view(a, topic)).collect();
        let first = views[0].clone()?;
        views
            .iter()
            .all(|v| v.as_ref() == Some(&first))
            .then_some(first)
    });
    let (leader, replicas, _) = view[&0].clone();
    (leader, replicas)
}

#[test]
fn acks_all_records_reach_every_replica_and_min_insync_replicas_is_enforced() {
    let mut cluster = start_cluster();
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.bootstrap()).collect();
    let addr = |id: i32| addrs[(id - 1) as usize].clone();

    // An RF=3 topic; acks=all records through a client that knows the whole cluster.
    let topic = topic_name("replicated");
    create_replicated(&addrs[0], &topic, 1, 3).expect("create an RF=3 topic");
    let (leader, replicas) = wait_topic(&addrs, &topic);
    let first_leader = leader;
    assert_eq!(replicas.len(), 3);
    const N: usize = 300;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let producer: FutureProducer = producer(
        &cluster.bootstrap_all(),
        &[("acks", "all"), ("enable.idempotence", "true")],
    );
    rt.block_on(async {
        let topic = topic.as_str();
        let sends = (0..N).map(|i| {
            let payload = format!("record-{i}");
            let producer = &producer;
            async move {
                let r = FutureRecord::to(topic)
                    .partition(0)
                    .payload(&payload)
                    .key("k");
                producer
                    .send(r, CLIENT_TIMEOUT)
                    .await
                    .unwrap_or_else(|(e, _)| panic!("acks=all produce of record {i}: {e}"))
            }
        });
        futures::future::join_all(sends).await;
    });
    drop(producer);

    // acks=all answered: the leader's high watermark covers every record, and a
    // consumer reads them all back in order.
    assert_eq!(latest(&addr(leader), &topic, 0, -1), (0, N as i64));
    let consumer = consumer(&cluster.bootstrap_all(), &[]);
    assign(&consumer, &topic, &[0], rdkafka::Offset::Beginning);
    let got = consume_to_end(&consumer, &[0], CONSUME_TIMEOUT);
    let payloads: Vec<String> = got.iter().map(payload_str).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("record-{i}")).collect();
    assert_eq!(payloads, expected);
    drop(consumer);

    // Every follower's log ends where the leader's does, with the same batches.
    for id in &replicas {
        assert_eq!(
            latest(&addr(*id), &topic, 0, DEBUG_REPLICA),
            (0, N as i64),
            "log end of replica {id}"
        );
    }
    let leader_log = replica_bytes(&addr(leader), &topic, 0, N as i64);
    for id in replicas.iter().filter(|id| **id != leader) {
        assert!(
            replica_bytes(&addr(*id), &topic, 0, N as i64) == leader_log,
            "replica {id}'s batches differ from the leader's"
        );
    }
    // Followers answer consumers NOT_LEADER_OR_FOLLOWER; they are not the leader.
    let follower = *replicas.iter().find(|id| **id != leader).unwrap();
    assert_eq!(latest(&addr(follower), &topic, 0, -1).0, 6);

    // min.insync.replicas=3: with one follower stopped and out of the in-sync set,
    // acks=all is refused before anything is appended; acks=1 still works.
    let strict = topic_name("strict");
    create_replicated_with(&addrs[0], &strict, 1, 3, &[("min.insync.replicas", "3")])
        .expect("create an RF=3 topic with min.insync.replicas=3");
    let (leader, replicas) = wait_topic(&addrs, &strict);
    assert_eq!(
        produce_code(&addr(leader), &strict, 0, -1),
        0,
        "all in sync"
    );
    let controller = raw_cluster_view(&addr(leader)).0;
    // Stop a follower, not the metadata leader if that can be avoided (no election).
    let stopped = *replicas
        .iter()
        .filter(|id| **id != leader)
        .max_by_key(|id| **id != controller)
        .unwrap();
    cluster.node(stopped).kill();
    wait_for(
        "the stopped follower to leave the in-sync set",
        CLUSTER_TIMEOUT,
        || {
            let v = topic_view(&addr(leader), &strict)?;
            let (_, _, isr) = &v[&0];
            (!isr.contains(&stopped)).then_some(())
        },
    );
    let end_before = latest(&addr(leader), &strict, 0, DEBUG_REPLICA).1;
    assert_eq!(
        produce_code(&addr(leader), &strict, 0, -1),
        NOT_ENOUGH_REPLICAS
    );
    assert_eq!(
        latest(&addr(leader), &strict, 0, DEBUG_REPLICA).1,
        end_before,
        "a refused acks=all write appends nothing"
    );
    assert_eq!(produce_code(&addr(leader), &strict, 0, 1), 0, "acks=1");
    // acks=all on a topic without the setting (min.insync.replicas=1) still works.
    if stopped != first_leader {
        assert_eq!(produce_code(&addr(first_leader), &topic, 0, -1), 0);
    }
}

/// The high watermark broker `bootstrap` holds for the partition (a follower's is the
/// leader's as last told), via a debugging consumer's Fetch.
fn replica_high_watermark(bootstrap: &str, topic: &str, partition: i32) -> i64 {
    let mut wire = Wire::connect(bootstrap);
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(DEBUG_REPLICA))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(0)
                .with_current_leader_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1)])]);
    let resp = wire.call(&req, 12);
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "debug fetch from {bootstrap}");
    p.high_watermark
}

/// Followers learn a moved high watermark at once, not with their next data or at the
/// end of their 500 ms long poll (issue 7): it is where a follower that takes over
/// starts serving consumers. After an acks=all write and nothing else, both followers
/// hold the new high watermark quickly; the fastest of three rounds is compared, so
/// a slow machine does not fail it.
#[test]
fn followers_learn_the_high_watermark_when_it_moves() {
    let cluster = start_cluster();
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.bootstrap()).collect();
    let topic = topic_name("hw-followers");
    create_replicated(&addrs[0], &topic, 1, 3).expect("create an RF=3 topic");
    let (leader, replicas) = wait_topic(&addrs, &topic);
    let followers: Vec<String> = replicas
        .iter()
        .filter(|id| **id != leader)
        .map(|id| addrs[(*id - 1) as usize].clone())
        .collect();
    assert_eq!(followers.len(), 2);
    let mut fastest = Duration::MAX;
    for round in 1..=3 {
        let code = wait_for("an acks=all write", CLUSTER_TIMEOUT, || {
            // NOT_ENOUGH_REPLICAS until the followers joined the in-sync set.
            let code = produce_code(&addrs[(leader - 1) as usize], &topic, 0, -1);
            (code != NOT_ENOUGH_REPLICAS).then_some(code)
        });
        assert_eq!(code, 0, "acks=all write {round}");
        let acked = Instant::now();
        let end = 3 * round;
        let deadline = acked + Duration::from_secs(10);
        while !followers
            .iter()
            .all(|f| replica_high_watermark(f, &topic, 0) >= end)
        {
            assert!(
                Instant::now() < deadline,
                "followers never learned high watermark {end}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        fastest = fastest.min(acked.elapsed());
    }
    assert!(
        fastest < Duration::from_millis(250),
        "followers learned the high watermark {fastest:?} after the ack at best"
    );
}
