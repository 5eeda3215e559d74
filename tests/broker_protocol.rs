//! Protocol behaviour beyond the happy path, over the raw wire and rdkafka's
//! admin client: pipelined requests answered in order across shards, acks=0
//! gets no response, Kafka's error codes for the common mistakes, the
//! `--auto-create-topics` / `--num-partitions` flags, OffsetForLeaderEpoch,
//! DescribeConfigs, and SIGTERM + restart keeping data and topics.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use indexmap::IndexMap;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiVersionsRequest, FetchRequest, MetadataRequest, MetadataResponse,
    OffsetForLeaderEpochRequest, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, TimestampType};
use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::types::RDKafkaErrorCode;

const OFFSET_OUT_OF_RANGE: i16 = 1;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const MESSAGE_TOO_LARGE: i16 = 10;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A magic-2 batch of `n` records whose values are `value(i)`.
fn batch_with(n: usize, value: impl Fn(usize) -> Bytes) -> Bytes {
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
            // Constant offset - sequence keeps all records in one batch (base sequence -1).
            sequence: (i as i32).wrapping_sub(1),
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(value(i)),
            headers: IndexMap::new(),
        })
        .collect();
    let buf = encode_uncompressed(&records);
    let out = buf;
    let info =
        kafka_protocol::records::RecordBatchDecoder::decode_batch_info(&mut out.clone()).unwrap();
    assert_eq!(info.len(), 1, "test helper must build exactly one batch");
    out
}

fn produce(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_transactional_id(None)
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}

fn only_partition(resp: &ProduceResponse) -> (i16, i64) {
    assert_eq!(resp.responses.len(), 1);
    assert_eq!(resp.responses[0].partition_responses.len(), 1);
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn metadata_for(wire: &mut Wire, topic: &str, allow_auto_create: bool) -> MetadataResponse {
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name(topic)))
        ]))
        .with_allow_auto_topic_creation(allow_auto_create);
    wire.call(&req, 12)
}

#[test]
fn pipelined_requests_are_answered_in_request_order_across_shards() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let topic = topic_name("pipeline");
    let partitions = 8;
    create_topic_blocking(&broker.bootstrap(), &topic, partitions);
    let mut w = Wire::connect(&broker.bootstrap());

    enum Sent {
        Produce {
            correlation_id: i32,
            partition: i32,
            round: i64,
        },
        ApiVersions(i32),
        Metadata(i32),
    }
    // Everything in one write: the broker sees a pipeline of 50 requests whose
    // partitions live on both shards, so answers can complete out of order.
    let mut bytes = BytesMut::new();
    let mut sent = Vec::new();
    for round in 0..5i64 {
        for partition in 0..partitions {
            let v = Bytes::from(format!("r{round}-p{partition}"));
            let (b, correlation_id) = w.encode_request(
                &produce(&topic, partition, -1, batch_with(1, |_| v.clone())),
                9,
            );
            bytes.extend_from_slice(&b);
            sent.push(Sent::Produce {
                correlation_id,
                partition,
                round,
            });
        }
        let (b, c) = w.encode_request(&ApiVersionsRequest::default(), 3);
        bytes.extend_from_slice(&b);
        sent.push(Sent::ApiVersions(c));
        let (b, c) = w.encode_request(&MetadataRequest::default().with_topics(None), 12);
        bytes.extend_from_slice(&b);
        sent.push(Sent::Metadata(c));
    }
    w.send_raw(&bytes).unwrap();

    for s in sent {
        match s {
            Sent::Produce {
                correlation_id,
                partition,
                round,
            } => {
                let resp = w.recv_response::<ProduceRequest>(9, correlation_id);
                let p = &resp.responses[0].partition_responses[0];
                assert_eq!(
                    (p.index, p.error_code, p.base_offset),
                    (partition, 0, round),
                    "pipelined produce"
                );
            }
            Sent::ApiVersions(c) => {
                assert_eq!(w.recv_response::<ApiVersionsRequest>(3, c).error_code, 0);
            }
            Sent::Metadata(c) => {
                assert_eq!(w.recv_response::<MetadataRequest>(12, c).brokers.len(), 1);
            }
        }
    }
}

#[test]
fn acks_0_produce_gets_no_response() {
    let broker = Broker::start();
    let topic = topic_name("acks0");
    create_topic_blocking(&broker.bootstrap(), &topic, 1);
    let mut w = Wire::connect(&broker.bootstrap());

    let (b, _) = w.encode_request(
        &produce(
            &topic,
            0,
            0,
            batch_with(3, |i| Bytes::from(format!("v{i}"))),
        ),
        9,
    );
    w.send_raw(&b).unwrap();
    // The next frame on the connection must answer the ApiVersions sent after it.
    let (b, c) = w.encode_request(&ApiVersionsRequest::default(), 3);
    w.send_raw(&b).unwrap();
    assert_eq!(
        w.recv_response::<ApiVersionsRequest>(3, c).error_code,
        0,
        "first response is ApiVersions'"
    );

    let c = consumer(&broker.bootstrap(), &[]);
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        let (_, high) = c.fetch_watermarks(&topic, 0, CLIENT_TIMEOUT).unwrap();
        if high == 3 {
            break;
        }
        assert!(high < 3, "high watermark {high} > 3");
        assert!(
            Instant::now() < deadline,
            "acks=0 records never appeared (high watermark {high})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn common_mistakes_get_kafka_error_codes() {
    let broker = Broker::start();
    let topic = topic_name("errors");
    create_topic_blocking(&broker.bootstrap(), &topic, 1);
    let mut w = Wire::connect(&broker.bootstrap());

    // Produce to a partition that does not exist.
    let resp = w.call(
        &produce(&topic, 99, -1, batch_with(1, |_| Bytes::from_static(b"x"))),
        9,
    );
    assert_eq!(
        only_partition(&resp).0,
        UNKNOWN_TOPIC_OR_PARTITION,
        "produce to partition 99"
    );

    // A record bigger than message.max.bytes (Kafka's default is 1 MiB + 12).
    let big = Bytes::from(vec![b'x'; 2 * 1024 * 1024]);
    let resp = w.call(&produce(&topic, 0, -1, batch_with(1, |_| big.clone())), 9);
    assert_eq!(only_partition(&resp).0, MESSAGE_TOO_LARGE, "2 MiB batch");

    // Fetch far past the end.
    let fetch = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(10)
        .with_max_bytes(1024 * 1024)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(&topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(1000)
                .with_current_leader_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1024 * 1024)])]);
    let resp = w.call(&fetch, 12);
    assert_eq!(
        resp.responses[0].partitions[0].error_code, OFFSET_OUT_OF_RANGE,
        "fetch at offset 1000 of 0"
    );

    // Nothing was written by any of the above.
    let c = consumer(&broker.bootstrap(), &[]);
    assert_eq!(
        c.fetch_watermarks(&topic, 0, CLIENT_TIMEOUT).unwrap(),
        (0, 0)
    );

    // CreateTopics: an existing name, and invalid names.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = admin(&broker.bootstrap());
    let opts = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let long_name = "x".repeat(250);
    let cases = [
        (topic.as_str(), RDKafkaErrorCode::TopicAlreadyExists),
        ("bad/name", RDKafkaErrorCode::InvalidTopic),
        ("..", RDKafkaErrorCode::InvalidTopic),
        (long_name.as_str(), RDKafkaErrorCode::InvalidTopic),
    ];
    for (t, want) in cases {
        let nt = NewTopic::new(t, 1, TopicReplication::Fixed(1));
        let res = rt
            .block_on(admin.create_topics([&nt], &opts))
            .expect("create_topics request");
        match &res[0] {
            Err((_, code)) => assert_eq!(*code, want, "create topic {t:?}"),
            Ok(_) => panic!("create topic {t:?} succeeded, expected {want:?}"),
        }
    }

    // DeleteTopics: the topic disappears from metadata; deleting it again is an error.
    let res = rt
        .block_on(admin.delete_topics(&[&topic], &opts))
        .expect("delete_topics request");
    assert!(res[0].is_ok(), "delete topic: {:?}", res[0]);
    let md = metadata_for(&mut w, &topic, false);
    assert_eq!(
        md.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION,
        "metadata after delete"
    );
    let res = rt
        .block_on(admin.delete_topics(&[&topic], &opts))
        .expect("delete_topics request");
    assert_eq!(
        res[0].as_ref().err().map(|e| e.1),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition)
    );
}

#[test]
fn auto_create_off_refuses_unknown_topics() {
    let broker = Broker::start_with(BrokerOptions::default().auto_create_topics(false));
    let mut w = Wire::connect(&broker.bootstrap());
    let topic = topic_name("nope");
    // The client asks for creation; the broker's setting wins.
    let md = metadata_for(&mut w, &topic, true);
    assert_eq!(md.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    let resp = w.call(
        &produce(&topic, 0, -1, batch_with(1, |_| Bytes::from_static(b"x"))),
        9,
    );
    assert_eq!(
        only_partition(&resp).0,
        UNKNOWN_TOPIC_OR_PARTITION,
        "produce to an unknown topic"
    );
    let md = metadata_for(&mut w, &topic, true);
    assert_eq!(
        md.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION,
        "still not created"
    );
}

#[test]
fn auto_created_topics_get_num_partitions() {
    let broker = Broker::start_with(BrokerOptions::default().num_partitions(3));
    let mut w = Wire::connect(&broker.bootstrap());
    let topic = topic_name("auto");
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        let md = metadata_for(&mut w, &topic, true);
        let t = &md.topics[0];
        if t.error_code == 0 {
            assert_eq!(t.partitions.len(), 3, "--num-partitions 3");
            break;
        }
        // Kafka answers LEADER_NOT_AVAILABLE while an auto-created topic is being set up.
        assert_eq!(
            t.error_code, LEADER_NOT_AVAILABLE,
            "auto-create metadata error"
        );
        assert!(
            Instant::now() < deadline,
            "auto-created topic never became available"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn offset_for_leader_epoch_returns_the_log_end() {
    let broker = Broker::start();
    let topic = topic_name("epoch");
    create_topic_blocking(&broker.bootstrap(), &topic, 1);
    let mut w = Wire::connect(&broker.bootstrap());
    let resp = w.call(
        &produce(
            &topic,
            0,
            -1,
            batch_with(3, |i| Bytes::from(format!("{i}"))),
        ),
        9,
    );
    assert_eq!(only_partition(&resp), (0, 0));
    let md = metadata_for(&mut w, &topic, false);
    let epoch = md.topics[0].partitions[0].leader_epoch;
    assert!(epoch >= 0, "leader epoch {epoch}");

    // librdkafka sends exactly v2; v3+ adds replica_id, v4 is flexible.
    for version in [2i16, 3, 4] {
        let req = OffsetForLeaderEpochRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(name(&topic))
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(epoch)
                    .with_leader_epoch(epoch)])]);
        let resp = w.call(&req, version);
        let p = &resp.topics[0].partitions[0];
        assert_eq!(p.error_code, 0, "OffsetForLeaderEpoch v{version}");
        assert_eq!(
            (p.leader_epoch, p.end_offset),
            (epoch, 3),
            "OffsetForLeaderEpoch v{version}: epoch end offset"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_configs_lists_topic_configs() {
    let broker = Broker::start();
    let topic = topic_name("configs");
    create_topic(&broker.bootstrap(), &topic, 1).await;
    let admin = admin(&broker.bootstrap());
    let opts = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let res = tokio::time::timeout(
        CLIENT_TIMEOUT,
        admin.describe_configs([&ResourceSpecifier::Topic(&topic)], &opts),
    )
    .await
    .expect("describe_configs timed out")
    .expect("describe_configs request");
    let cfg = res[0]
        .as_ref()
        .unwrap_or_else(|e| panic!("describe_configs error: {e:?}"));
    for key in [
        "cleanup.policy",
        "retention.ms",
        "retention.bytes",
        "segment.bytes",
        "max.message.bytes",
    ] {
        let e = cfg
            .get(key)
            .unwrap_or_else(|| panic!("DescribeConfigs lacks {key}"));
        assert!(e.value.is_some(), "{key} has no value");
    }
    assert_eq!(
        cfg.get("cleanup.policy").unwrap().value.as_deref(),
        Some("delete")
    );
}

#[test]
fn sigterm_stops_the_broker_and_a_restart_keeps_topics_and_data() {
    let mut broker = Broker::start_with(BrokerOptions::default().cores(2));
    let topic = topic_name("term");
    create_topic_blocking(&broker.bootstrap(), &topic, 4);
    let mut w = Wire::connect(&broker.bootstrap());
    for p in 0..4 {
        let resp = w.call(
            &produce(
                &topic,
                p,
                -1,
                batch_with(5, |i| Bytes::from(format!("p{p}-{i}"))),
            ),
            9,
        );
        assert_eq!(only_partition(&resp), (0, 0));
    }
    drop(w);
    assert!(
        broker.terminate(Duration::from_secs(15)),
        "broker did not exit within 15 s of SIGTERM"
    );
    broker.restart();

    let c = consumer(&broker.bootstrap(), &[]);
    let md = c.fetch_metadata(Some(&topic), CLIENT_TIMEOUT).unwrap();
    assert_eq!(
        md.topics()[0].partitions().len(),
        4,
        "partitions after restart"
    );
    let all = [0, 1, 2, 3];
    assign(&c, &topic, &all, rdkafka::Offset::Beginning);
    let mut got: Vec<String> = consume_to_end(&c, &all, CONSUME_TIMEOUT)
        .iter()
        .map(payload_str)
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..4)
        .flat_map(|p| (0..5).map(move |i| format!("p{p}-{i}")))
        .collect();
    want.sort();
    assert_eq!(got, want, "records after SIGTERM + restart");

    // And the topic still takes writes at the right offsets.
    let mut w = Wire::connect(&broker.bootstrap());
    let resp = w.call(
        &produce(
            &topic,
            2,
            -1,
            batch_with(1, |_| Bytes::from_static(b"more")),
        ),
        9,
    );
    assert_eq!(only_partition(&resp), (0, 5));
}

fn fetch_at(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1024 * 1024)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_current_leader_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1024 * 1024)])])
}

/// Fetch at the log end waits up to max.wait.ms for min.bytes (long poll), and
/// returns as soon as data arrives.
#[test]
fn fetch_long_polls_until_data_or_max_wait() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let topic = topic_name("longpoll");
    create_topic_blocking(&broker.bootstrap(), &topic, 1);

    // Nothing arrives: the answer comes after about max_wait_ms, empty.
    let mut w = Wire::connect(&broker.bootstrap());
    let started = Instant::now();
    let resp = w.call(&fetch_at(&topic, 0, 700), 12);
    let waited = started.elapsed();
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 0);
    assert!(
        p.records.as_ref().map_or(true, |r| r.is_empty()),
        "records from an empty partition"
    );
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_millis(5000),
        "empty fetch with max_wait_ms=700 answered after {waited:?}"
    );

    // Data arrives while the fetch waits: it is answered well before max_wait_ms.
    let (b, c) = w.encode_request(&fetch_at(&topic, 0, 10_000), 12);
    let started = Instant::now();
    w.send_raw(&b).unwrap();
    let mut producer_conn = Wire::connect(&broker.bootstrap());
    let resp = producer_conn.call(
        &produce(
            &topic,
            0,
            -1,
            batch_with(2, |i| Bytes::from(format!("{i}"))),
        ),
        9,
    );
    assert_eq!(only_partition(&resp), (0, 0));
    let resp = w.recv_response::<FetchRequest>(12, c);
    let waited = started.elapsed();
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 2);
    assert!(
        p.records.as_ref().is_some_and(|r| !r.is_empty()),
        "long-poll fetch woke without records"
    );
    assert!(
        waited < Duration::from_secs(5),
        "long-poll fetch not woken by a produce (answered after {waited:?})"
    );
}

/// DeleteRecords moves the log start; consumers from the beginning start there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_the_log_start() {
    use rdkafka::producer::FutureRecord;
    let broker = Broker::start();
    let topic = topic_name("delrec");
    create_topic(&broker.bootstrap(), &topic, 1).await;
    let p = producer(&broker.bootstrap(), &[("acks", "all")]);
    for i in 0..10 {
        let v = format!("v{i}");
        tokio::time::timeout(
            CLIENT_TIMEOUT,
            p.send(
                FutureRecord::<str, str>::to(&topic).payload(&v),
                Duration::ZERO,
            ),
        )
        .await
        .unwrap()
        .unwrap_or_else(|(e, _)| panic!("{e:?}"));
    }
    let admin = admin(&broker.bootstrap());
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(4))
        .unwrap();
    let opts = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let res = tokio::time::timeout(CLIENT_TIMEOUT, admin.delete_records(&tpl, &opts))
        .await
        .expect("delete_records timed out")
        .expect("delete_records");
    let e = res.find_partition(&topic, 0).unwrap();
    assert!(
        e.error().is_ok(),
        "delete_records partition error {:?}",
        e.error()
    );
    assert_eq!(
        e.offset(),
        rdkafka::Offset::Offset(4),
        "new low watermark in the DeleteRecords response"
    );

    let c = consumer(&broker.bootstrap(), &[]);
    assert_eq!(
        c.fetch_watermarks(&topic, 0, CLIENT_TIMEOUT).unwrap(),
        (4, 10),
        "watermarks after DeleteRecords"
    );
    assign(&c, &topic, &[0], rdkafka::Offset::Beginning);
    let msgs = consume_to_end(&c, &[0], CONSUME_TIMEOUT);
    let got: Vec<(i64, String)> = msgs
        .iter()
        .map(|m| (rdkafka::Message::offset(m), payload_str(m)))
        .collect();
    let want: Vec<(i64, String)> = (4..10).map(|i| (i, format!("v{i}"))).collect();
    assert_eq!(got, want, "consume from beginning after DeleteRecords");
}

/// Many simultaneous connections are all served (spread over the shards' listeners).
#[test]
fn two_hundred_concurrent_connections_are_served() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let mut conns: Vec<Wire> = (0..200)
        .map(|_| Wire::connect(&broker.bootstrap()))
        .collect();
    let mut pending = Vec::new();
    for w in conns.iter_mut() {
        let (b, c) = w.encode_request(&ApiVersionsRequest::default(), 3);
        w.send_raw(&b).unwrap();
        pending.push(c);
    }
    for (w, c) in conns.iter_mut().zip(pending) {
        assert_eq!(w.recv_response::<ApiVersionsRequest>(3, c).error_code, 0);
    }
}

async fn create_topic_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let admin = admin(bootstrap);
    let opts = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let mut nt = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        nt = nt.set(k, v);
    }
    let res = tokio::time::timeout(CLIENT_TIMEOUT, admin.create_topics([&nt], &opts))
        .await
        .expect("create_topics timed out")
        .expect("create_topics");
    assert!(
        res[0].is_ok(),
        "create {topic} with {configs:?}: {:?}",
        res[0]
    );
}

async fn topic_config(bootstrap: &str, topic: &str, key: &str) -> Option<String> {
    let admin = admin(bootstrap);
    let opts = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let res = tokio::time::timeout(
        CLIENT_TIMEOUT,
        admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts),
    )
    .await
    .expect("describe_configs timed out")
    .expect("describe_configs");
    let cfg = res[0]
        .as_ref()
        .unwrap_or_else(|e| panic!("describe_configs: {e:?}"));
    cfg.get(key).and_then(|e| e.value.clone())
}

/// Topic configs given at creation and changed with AlterConfigs are reported
/// by DescribeConfigs, and survive a restart (they live in the metadata log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_configs_are_stored_altered_and_survive_a_restart() {
    let mut broker = Broker::start();
    let topic = topic_name("cfg");
    create_topic_with(
        &broker.bootstrap(),
        &topic,
        1,
        &[("retention.ms", "123456789"), ("cleanup.policy", "delete")],
    )
    .await;
    assert_eq!(
        topic_config(&broker.bootstrap(), &topic, "retention.ms")
            .await
            .as_deref(),
        Some("123456789")
    );

    let admin = admin(&broker.bootstrap());
    let opts = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let alter = rdkafka::admin::AlterConfig::new(ResourceSpecifier::Topic(&topic))
        .set("retention.ms", "987654321");
    let res = tokio::time::timeout(CLIENT_TIMEOUT, admin.alter_configs([&alter], &opts))
        .await
        .expect("alter_configs timed out")
        .expect("alter_configs");
    assert!(res[0].is_ok(), "alter_configs: {:?}", res[0]);
    assert_eq!(
        topic_config(&broker.bootstrap(), &topic, "retention.ms")
            .await
            .as_deref(),
        Some("987654321")
    );

    broker.restart();
    assert_eq!(
        topic_config(&broker.bootstrap(), &topic, "retention.ms")
            .await
            .as_deref(),
        Some("987654321"),
        "topic config after restart"
    );
}

/// Small segments (segment.bytes = 1 MiB) so the log rolls many times; after a
/// SIGKILL and restart every record is there, and a consumer can start in the
/// middle of an old segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_segments_survive_a_restart_and_serve_any_offset() {
    use rdkafka::producer::FutureRecord;
    let mut broker = Broker::start();
    let topic = topic_name("roll");
    create_topic_with(
        &broker.bootstrap(),
        &topic,
        1,
        &[("segment.bytes", "1048576")],
    )
    .await;
    let p = producer(&broker.bootstrap(), &[("acks", "all"), ("linger.ms", "5")]);
    let n = 6000usize; // ~6 MiB of 1 KiB records: at least 5 segments
    let value = |i: usize| format!("{i:08}-{}", "r".repeat(1000));
    let mut futs = Vec::new();
    for i in 0..n {
        let v = value(i);
        futs.push(
            p.send_result(FutureRecord::<str, str>::to(&topic).payload(&v))
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
    }
    let results = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(futs))
        .await
        .expect("acks");
    for (i, r) in results.into_iter().enumerate() {
        let d = r
            .unwrap()
            .unwrap_or_else(|(e, _)| panic!("record {i}: {e:?}"));
        assert_eq!(d.offset, i as i64);
    }
    // DESIGN.md's layout: data/topics/<topic>-<partition>/<base offset>.log
    let dir = broker.data_dir().join("topics").join(format!("{topic}-0"));
    let segments = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(
        segments >= 5,
        "segment.bytes=1MiB and ~6 MiB written, but only {segments} segment files in {}",
        dir.display()
    );
    broker.restart();

    for start in [0usize, 1234, 4321, n - 1] {
        let c = consumer(&broker.bootstrap(), &[]);
        assign(&c, &topic, &[0], rdkafka::Offset::Offset(start as i64));
        let msgs = consume_to_end(&c, &[0], CONSUME_TIMEOUT);
        assert_eq!(
            msgs.len(),
            n - start,
            "records from offset {start} after restart"
        );
        for (k, m) in msgs.iter().enumerate() {
            assert_eq!(rdkafka::Message::offset(m), (start + k) as i64);
            assert_eq!(
                payload_str(m),
                value(start + k),
                "value at offset {}",
                start + k
            );
        }
    }
}

/// A torn tail (the last batch's bytes damaged on disk while the broker was
/// down) is cut at recovery: every batch before it is served, nothing after,
/// and appends continue at the first lost offset (DESIGN.md "On disk").
#[test]
fn a_damaged_last_batch_is_truncated_at_recovery_and_appends_continue() {
    use std::io::{Seek, SeekFrom, Write as _};
    let mut broker = Broker::start();
    let topic = topic_name("torn");
    create_topic_blocking(&broker.bootstrap(), &topic, 1);
    let mut w = Wire::connect(&broker.bootstrap());
    let mut logical_end = 0u64;
    for b in 0..10 {
        let batch = batch_with(10, |i| Bytes::from(format!("b{b}-r{i}")));
        logical_end += batch.len() as u64;
        assert_eq!(
            only_partition(&w.call(&produce(&topic, 0, -1, batch), 9)),
            (0, b * 10)
        );
    }
    drop(w);
    broker.kill();

    let path = broker
        .data_dir()
        .join("topics")
        .join(format!("{topic}-0"))
        .join("00000000000000000000.log");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.seek(SeekFrom::Start(logical_end - 10)).unwrap();
    f.write_all(&[0xa5; 10]).unwrap();
    f.sync_all().unwrap();
    drop(f);

    broker.restart();
    let c = consumer(&broker.bootstrap(), &[]);
    assert_eq!(
        c.fetch_watermarks(&topic, 0, CLIENT_TIMEOUT).unwrap(),
        (0, 90),
        "watermarks after a torn last batch"
    );
    assign(&c, &topic, &[0], rdkafka::Offset::Beginning);
    let got: Vec<String> = consume_to_end(&c, &[0], CONSUME_TIMEOUT)
        .iter()
        .map(payload_str)
        .collect();
    let want: Vec<String> = (0..9)
        .flat_map(|b| (0..10).map(move |i| format!("b{b}-r{i}")))
        .collect();
    assert_eq!(got, want, "records after recovery");

    let mut w = Wire::connect(&broker.bootstrap());
    let resp = w.call(
        &produce(
            &topic,
            0,
            -1,
            batch_with(1, |_| Bytes::from_static(b"after")),
        ),
        9,
    );
    assert_eq!(
        only_partition(&resp),
        (0, 90),
        "append after recovery reuses the lost offsets"
    );
}

/// Deleting a topic and creating one of the same name gives an empty topic
/// (no old data resurfaces), also after the metadata log is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_starts_empty_even_after_restart() {
    let mut broker = Broker::start();
    let topic = topic_name("recreate");
    create_topic(&broker.bootstrap(), &topic, 1).await;
    let mut w = Wire::connect(&broker.bootstrap());
    let resp = w.call(
        &produce(
            &topic,
            0,
            -1,
            batch_with(5, |i| Bytes::from(format!("old-{i}"))),
        ),
        9,
    );
    assert_eq!(only_partition(&resp), (0, 0));

    let admin = admin(&broker.bootstrap());
    let opts = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let res = tokio::time::timeout(CLIENT_TIMEOUT, admin.delete_topics(&[&topic], &opts))
        .await
        .unwrap()
        .unwrap();
    assert!(res[0].is_ok(), "delete: {:?}", res[0]);
    create_topic(&broker.bootstrap(), &topic, 2).await;
    let resp = w.call(
        &produce(&topic, 0, -1, batch_with(1, |_| Bytes::from_static(b"new"))),
        9,
    );
    assert_eq!(
        only_partition(&resp),
        (0, 0),
        "first offset of the recreated topic"
    );
    drop(w);

    for phase in ["before restart", "after restart"] {
        let c = consumer(&broker.bootstrap(), &[]);
        let md = c.fetch_metadata(Some(&topic), CLIENT_TIMEOUT).unwrap();
        assert_eq!(md.topics()[0].partitions().len(), 2, "partitions {phase}");
        assign(&c, &topic, &[0, 1], rdkafka::Offset::Beginning);
        let got: Vec<String> = consume_to_end(&c, &[0, 1], CONSUME_TIMEOUT)
            .iter()
            .map(payload_str)
            .collect();
        assert_eq!(
            got,
            vec!["new".to_string()],
            "recreated topic contents {phase}"
        );
        if phase == "before restart" {
            broker.restart();
        }
    }
}

/// CreatePartitions adds partitions that take writes and survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_partitions_adds_usable_partitions() {
    let mut broker = Broker::start_with(BrokerOptions::default().cores(2));
    let topic = topic_name("grow");
    create_topic(&broker.bootstrap(), &topic, 1).await;
    let admin = admin(&broker.bootstrap());
    let opts = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let np = rdkafka::admin::NewPartitions::new(&topic, 3);
    let res = tokio::time::timeout(CLIENT_TIMEOUT, admin.create_partitions([&np], &opts))
        .await
        .unwrap()
        .unwrap();
    assert!(res[0].is_ok(), "create_partitions: {:?}", res[0]);

    let mut w = Wire::connect(&broker.bootstrap());
    for p in 0..3 {
        let resp = w.call(
            &produce(
                &topic,
                p,
                -1,
                batch_with(1, move |_| Bytes::from(format!("p{p}"))),
            ),
            9,
        );
        assert_eq!(only_partition(&resp), (0, 0), "produce to partition {p}");
    }
    drop(w);
    broker.restart();
    let c = consumer(&broker.bootstrap(), &[]);
    let md = c.fetch_metadata(Some(&topic), CLIENT_TIMEOUT).unwrap();
    assert_eq!(
        md.topics()[0].partitions().len(),
        3,
        "partitions after restart"
    );
    assign(&c, &topic, &[0, 1, 2], rdkafka::Offset::Beginning);
    let mut got: Vec<String> = consume_to_end(&c, &[0, 1, 2], CONSUME_TIMEOUT)
        .iter()
        .map(payload_str)
        .collect();
    got.sort();
    assert_eq!(got, vec!["p0", "p1", "p2"]);
}

/// `runnel serve` with no arguments listens on 127.0.0.1:9092 and keeps its
/// data in ./data (README's first command). Needs port 9092 free.
#[test]
fn serve_without_arguments_uses_the_documented_defaults() {
    use std::io::BufRead;
    if let Err(e) = std::net::TcpListener::bind("127.0.0.1:9092") {
        panic!("port 9092 is busy ({e}); this test checks the default listener, stop whatever holds it");
    }
    let cwd = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(runnel_bin())
        .arg("serve")
        .current_dir(cwd.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Other lines (e.g. the admin endpoint) may come first; the ready line must come.
    let deadline = Instant::now() + BROKER_READY_TIMEOUT;
    let mut lines = Vec::new();
    let ready = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) if l == "runnel: ready on 127.0.0.1:9092" => break true,
            Ok(l) => lines.push(l),
            Err(_) => break false,
        }
    };
    let line = lines;
    let data_exists = cwd.path().join("data").is_dir();
    let served = ready && {
        let mut w = Wire::connect("127.0.0.1:9092");
        w.call(&ApiVersionsRequest::default(), 3).error_code == 0
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "no ready line for 127.0.0.1:9092; stdout: {line:?}");
    assert!(data_exists, "./data not created in the working directory");
    assert!(served, "ApiVersions on 127.0.0.1:9092 failed");
}

/// A two-shard broker comes up every time: 100 fresh starts, each bounded by
/// the harness's ready timeout. (A startup race once left both shards idle
/// before "metadata replayed" in roughly 1 of 100-200 `--cores 2` starts.)
#[test]
fn a_two_shard_broker_starts_every_time() {
    for i in 0..100 {
        eprintln!("start {i}");
        let broker = Broker::start_with(BrokerOptions::default().cores(2));
        let mut w = Wire::connect(&broker.bootstrap());
        assert_eq!(
            w.call(&ApiVersionsRequest::default(), 3).error_code,
            0,
            "start {i}"
        );
    }
}
