//! Admin operations through librdkafka's AdminClient against the real broker:
//! CreatePartitions, AlterConfigs + DescribeConfigs (kept across a restart, invalid
//! values refused), DeleteRecords (log start moves, reads start there), DeleteTopics
//! (gone from metadata, the name can be reused).

mod common;

use common::*;
use rdkafka::admin::{AdminOptions, AlterConfig, NewPartitions, ResourceSpecifier};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

fn opts() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(CLIENT_TIMEOUT))
        .request_timeout(Some(CLIENT_TIMEOUT))
}

async fn produce_to(bootstrap: &str, topic: &str, partition: i32, n: usize) {
    let p = producer(bootstrap, &[("acks", "all")]);
    for i in 0..n {
        let v = format!("{topic}-{partition}-{i}");
        p.send(
            FutureRecord::to(topic)
                .payload(&v)
                .key("k")
                .partition(partition),
            CLIENT_TIMEOUT,
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}/{partition}: {e}"));
    }
}

async fn topic_config(bootstrap: &str, topic: &str, key: &str) -> Option<String> {
    let admin = admin(bootstrap);
    let res = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &opts())
        .await
        .expect("describe_configs");
    let resource = res
        .into_iter()
        .next()
        .expect("one result")
        .expect("topic described");
    resource.get(key).and_then(|e| e.value.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn create_partitions_adds_writable_partitions() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let bootstrap = broker.bootstrap();
    let topic = topic_name("grow");
    create_topic(&bootstrap, &topic, 3).await;
    let admin = admin(&bootstrap);
    let res = admin
        .create_partitions([&NewPartitions::new(&topic, 5)], &opts())
        .await
        .expect("create_partitions");
    assert_eq!(res, vec![Ok(topic.clone())]);
    // Shrinking is refused with INVALID_PARTITIONS.
    let res = admin
        .create_partitions([&NewPartitions::new(&topic, 2)], &opts())
        .await
        .expect("request");
    assert_eq!(
        res,
        vec![Err((topic.clone(), RDKafkaErrorCode::InvalidPartitions))]
    );
    produce_to(&bootstrap, &topic, 4, 3).await;
    let c = consumer(&bootstrap, &[]);
    assign(&c, &topic, &[4], Offset::Beginning);
    let got = consume_to_end(&c, &[4], CONSUME_TIMEOUT);
    assert_eq!(got.len(), 3);
    let md = c
        .fetch_metadata(Some(&topic), CLIENT_TIMEOUT)
        .expect("metadata");
    assert_eq!(md.topics()[0].partitions().len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn alter_configs_are_described_kept_across_restart_and_validated() {
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("cfg");
    create_topic(&bootstrap, &topic, 1).await;
    assert_eq!(
        topic_config(&bootstrap, &topic, "retention.ms")
            .await
            .as_deref(),
        Some("604800000")
    );

    let client = admin(&bootstrap);
    let change = AlterConfig::new(ResourceSpecifier::Topic(&topic))
        .set("retention.ms", "3600000")
        .set("segment.bytes", "1048576");
    let res = client
        .alter_configs([&change], &opts())
        .await
        .expect("alter_configs");
    assert!(res[0].is_ok(), "{res:?}");
    assert_eq!(
        topic_config(&bootstrap, &topic, "retention.ms")
            .await
            .as_deref(),
        Some("3600000")
    );
    assert_eq!(
        topic_config(&bootstrap, &topic, "segment.bytes")
            .await
            .as_deref(),
        Some("1048576")
    );

    // Invalid values are refused and change nothing. (The error code itself is checked
    // in tests/python/test_admin.py: the rdkafka crate's AlterConfigs result reports
    // Ok for a resource the broker answered INVALID_CONFIG.)
    let bad = AlterConfig::new(ResourceSpecifier::Topic(&topic)).set("retention.ms", "soon");
    client
        .alter_configs([&bad], &opts())
        .await
        .expect("request");
    assert_eq!(
        topic_config(&bootstrap, &topic, "retention.ms")
            .await
            .as_deref(),
        Some("3600000")
    );

    // The change is an event in the metadata log: a restart replays it.
    broker.restart();
    assert_eq!(
        topic_config(&bootstrap, &topic, "retention.ms")
            .await
            .as_deref(),
        Some("3600000")
    );
    // An unknown topic has no configs (the broker answers UNKNOWN_TOPIC_OR_PARTITION;
    // the rdkafka crate surfaces that as an empty resource).
    let res = admin(&bootstrap)
        .describe_configs([&ResourceSpecifier::Topic("no-such-topic")], &opts())
        .await
        .expect("request");
    match &res[0] {
        Err(_) => {}
        Ok(r) => assert!(r.entries.is_empty(), "{r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_records_moves_the_log_start() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("trim");
    create_topic(&bootstrap, &topic, 1).await;
    produce_to(&bootstrap, &topic, 0, 10).await;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(6))
        .unwrap();
    let res = admin(&bootstrap)
        .delete_records(&tpl, &opts())
        .await
        .expect("delete_records");
    let el = res.find_partition(&topic, 0).expect("partition in result");
    assert!(el.error().is_ok(), "{:?}", el.error());
    assert_eq!(el.offset(), Offset::Offset(6), "new low watermark");
    let c = consumer(&bootstrap, &[]);
    let (low, high) = c
        .fetch_watermarks(&topic, 0, CLIENT_TIMEOUT)
        .expect("watermarks");
    assert_eq!((low, high), (6, 10));
    assign(&c, &topic, &[0], Offset::Beginning);
    let got = consume_to_end(&c, &[0], CONSUME_TIMEOUT);
    assert_eq!(
        got.iter()
            .map(|m| rdkafka::Message::offset(m))
            .collect::<Vec<_>>(),
        vec![6, 7, 8, 9]
    );
    // Past the end is refused.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(99))
        .unwrap();
    let res = admin(&bootstrap)
        .delete_records(&tpl, &opts())
        .await
        .expect("request");
    assert!(res.find_partition(&topic, 0).unwrap().error().is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_topics_removes_topic_and_frees_the_name() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2).auto_create_topics(false));
    let bootstrap = broker.bootstrap();
    let topic = topic_name("gone");
    create_topic(&bootstrap, &topic, 4).await;
    produce_to(&bootstrap, &topic, 1, 5).await;
    let admin = admin(&bootstrap);
    let res = admin
        .delete_topics(&[&topic], &opts())
        .await
        .expect("delete_topics");
    assert_eq!(res, vec![Ok(topic.clone())]);
    let res = admin
        .delete_topics(&[&topic], &opts())
        .await
        .expect("request");
    assert_eq!(
        res,
        vec![Err((
            topic.clone(),
            RDKafkaErrorCode::UnknownTopicOrPartition
        ))]
    );
    let c = consumer(&bootstrap, &[]);
    let md = c.fetch_metadata(None, CLIENT_TIMEOUT).expect("metadata");
    assert!(
        md.topics().iter().all(|t| t.name() != topic),
        "deleted topic still listed"
    );
    // Same name again: a new, empty topic.
    create_topic(&bootstrap, &topic, 2).await;
    let (low, high) = c
        .fetch_watermarks(&topic, 1, CLIENT_TIMEOUT)
        .expect("watermarks");
    assert_eq!((low, high), (0, 0), "recreated topic starts empty");
}
