//! Incremental fetch sessions (KIP-227), as the Java consumer uses them: a full fetch
//! opens a session; later fetches name only changed partitions and get back only
//! partitions with news; wrong epochs and unknown ids get their error codes. Records
//! are produced by librdkafka; the fetches are encoded with the kafka-protocol crate
//! (librdkafka itself never opens sessions).

mod common;

use common::*;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::producer::FutureRecord;

const VERSION: i16 = 12; // flexible, topics by name

fn fetch(
    session_id: i32,
    epoch: i32,
    parts: &[(&str, i32, i64)],
    forgotten: &[(&str, i32)],
) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (t, p, off) in parts {
        let fp = FetchPartition::default()
            .with_partition(*p)
            .with_fetch_offset(*off)
            .with_partition_max_bytes(1 << 20);
        match topics.iter_mut().find(|x| x.topic.0.as_str() == *t) {
            Some(x) => x.partitions.push(fp),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partitions(vec![fp]),
            ),
        }
    }
    let forgotten = forgotten
        .iter()
        .map(|(t, p)| {
            ForgottenTopic::default()
                .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                .with_partitions(vec![*p])
        })
        .collect();
    FetchRequest::default()
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(8 << 20)
        .with_session_id(session_id)
        .with_session_epoch(epoch)
        .with_topics(topics)
        .with_forgotten_topics_data(forgotten)
}

/// (partition, error, high watermark, record bytes) of every partition in a response.
fn summary(r: &kafka_protocol::messages::FetchResponse) -> Vec<(i32, i16, i64, usize)> {
    r.responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| {
            (
                p.partition_index,
                p.error_code,
                p.high_watermark,
                p.records.as_ref().map_or(0, |b| b.len()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn incremental_fetches_answer_only_partitions_with_news() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let bootstrap = broker.bootstrap();
    let topic = topic_name("sessions");
    create_topic(&bootstrap, &topic, 2).await;
    let producer = producer(&bootstrap, &[("acks", "all")]);
    for i in 0..3 {
        producer
            .send(
                FutureRecord::to(&topic)
                    .payload(&format!("p0-{i}"))
                    .key("k")
                    .partition(0),
                CLIENT_TIMEOUT,
            )
            .await
            .expect("delivered");
    }

    let mut w = Wire::connect(&bootstrap);
    // Epoch 0 opens a session: a full response with every partition.
    let r = w.call(
        &fetch(0, 0, &[(&topic, 0, 0), (&topic, 1, 0)], &[]),
        VERSION,
    );
    assert_eq!(r.error_code, 0);
    let session = r.session_id;
    assert_ne!(session, 0, "the broker opened a session");
    let s = summary(&r);
    assert_eq!(s.len(), 2, "full response lists both partitions: {s:?}");
    assert!(
        s[0].3 > 0 && s[0].2 == 3,
        "partition 0 has its 3 records: {s:?}"
    );
    assert_eq!(s[1], (1, 0, 0, 0));

    // Epoch 1: the client moved partition 0 to its end; nothing new anywhere.
    let r = w.call(&fetch(session, 1, &[(&topic, 0, 3)], &[]), VERSION);
    assert_eq!((r.error_code, r.session_id), (0, session));
    let s = summary(&r);
    assert!(s.iter().all(|p| p.3 == 0), "no records: {s:?}");
    assert!(
        s.iter().all(|p| p.0 == 0),
        "only the partition the request named: {s:?}"
    );

    // New data on partition 1 only: epoch 2 names no partition and gets exactly it.
    producer
        .send(
            FutureRecord::to(&topic)
                .payload("p1-0")
                .key("k")
                .partition(1),
            CLIENT_TIMEOUT,
        )
        .await
        .expect("delivered");
    let r = w.call(&fetch(session, 2, &[], &[]), VERSION);
    let s = summary(&r);
    assert_eq!(s.len(), 1, "only partition 1 has news: {s:?}");
    assert_eq!((s[0].0, s[0].2), (1, 1));
    assert!(s[0].3 > 0);

    // Forgetting partition 1 and fetching from its end: no news, no partitions.
    let r = w.call(&fetch(session, 3, &[], &[(&topic, 1)]), VERSION);
    assert!(summary(&r).is_empty(), "{:?}", summary(&r));

    // A replayed epoch and an unknown session id are refused with KIP-227's codes.
    let r = w.call(&fetch(session, 3, &[], &[]), VERSION);
    assert_eq!(r.error_code, 71, "INVALID_FETCH_SESSION_EPOCH");
    assert!(r.responses.is_empty());
    let r = w.call(&fetch(session ^ 0x5555, 1, &[], &[]), VERSION);
    assert_eq!(r.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");

    // Epoch -1 closes the session and answers as a plain full fetch.
    let r = w.call(&fetch(session, -1, &[(&topic, 0, 0)], &[]), VERSION);
    assert_eq!((r.error_code, r.session_id), (0, 0));
    assert_eq!(summary(&r)[0].2, 3);
    let r = w.call(&fetch(session, 4, &[], &[]), VERSION);
    assert_eq!(r.error_code, 70, "closed session is gone");
}
