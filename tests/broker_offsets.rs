//! Every offset the broker reports to a consumer is one it can fetch. On a single node a
//! consumer reads only written batches (acks=1 appends sit in the write buffers for a
//! moment, and would die with the process): ListOffsets LATEST, MAX_TIMESTAMP and
//! timestamp lookups, and the Fetch high watermark must all stay within that end,
//! or a consumer that starts at "latest" asks for offsets the partition does not
//! serve (and, after a crash, that are gone: OFFSET_OUT_OF_RANGE).

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, ListOffsetsRequest};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset};

const LATEST: i64 = -1;
const MAX_TIMESTAMP: i64 = -3;
/// Record i is produced with timestamp `TS_BASE + i`.
const TS_BASE: i64 = 1_700_000_000_000;

/// ListOffsets v7 for one partition as a consumer (replica -1): (error, timestamp, offset).
fn list_offset(wire: &mut Wire, topic: &str, timestamp: i64) -> (i16, i64, i64) {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name_of(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(timestamp)])]);
    let resp = wire.call(&req, 7);
    let p = &resp.topics[0].partitions[0];
    (p.error_code, p.timestamp, p.offset)
}

/// A consumer's Fetch v12 at `offset` that does not wait: (error, high watermark,
/// last stable offset).
fn fetch_now(wire: &mut Wire, topic: &str, offset: i64) -> (i16, i64, i64) {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(64 << 10)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name_of(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_current_leader_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(64 << 10)])]);
    let resp = wire.call(&req, 12);
    let p = &resp.responses[0].partitions[0];
    (p.error_code, p.high_watermark, p.last_stable_offset)
}

/// Polls until the first record, which must be at `offset`: no OFFSET_OUT_OF_RANGE
/// (auto.offset.reset=error makes one an error) and nothing skipped.
fn first_record_at(consumer: &rdkafka::consumer::BaseConsumer, offset: i64) {
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    loop {
        assert!(
            Instant::now() < deadline,
            "no record at offset {offset} within {CONSUME_TIMEOUT:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Ok(m)) => {
                assert_eq!(
                    m.offset(),
                    offset,
                    "a consumer assigned at the reported latest offset"
                );
                return;
            }
            Some(Err(e)) => panic!("consumer assigned at latest offset {offset}: {e:?}"),
        }
    }
}

/// While an acks=1 producer streams records, every ListOffsets answer (LATEST through
/// rdkafka, MAX_TIMESTAMP and a timestamp lookup raw) is checked against the Fetch
/// that follows it: a LATEST offset is at most the high watermark that Fetch then
/// reports (the watermark only grows), and a found offset lies below it. Now and then
/// an rdkafka consumer with auto.offset.reset=error starts at the LATEST offset and
/// must get its record there.
#[test]
fn reported_offsets_never_pass_what_fetch_serves_under_acks1_load() {
    const ROUNDS: usize = 400;
    const CONSUMER_EVERY: usize = 80;
    const CAP: Duration = Duration::from_secs(15);
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("offsets-visible");
    create_topic_blocking(&bootstrap, &topic, 1);

    let stop = Arc::new(AtomicBool::new(false));
    // Records enqueued so far (record i has timestamp TS_BASE + i).
    let enqueued = Arc::new(AtomicI64::new(0));
    let producer_thread = {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        let (stop, enqueued) = (stop.clone(), enqueued.clone());
        std::thread::spawn(move || {
            let p: ThreadedProducer<DefaultProducerContext> = {
                let mut c = base_config(&bootstrap);
                c.set("acks", "1")
                    .set("linger.ms", "1")
                    .set("message.timeout.ms", "15000");
                c.create().expect("create producer")
            };
            let value = vec![b'x'; 20];
            let mut i = 0i64;
            // Bounded by the test's own cap even if `stop` never came.
            let deadline = Instant::now() + CAP + Duration::from_secs(5);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = BaseRecord::<(), _>::to(&topic)
                    .partition(0)
                    .payload(&value)
                    .timestamp(TS_BASE + i);
                match p.send(r) {
                    Ok(()) => {
                        i += 1;
                        enqueued.store(i, Ordering::Relaxed);
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        std::thread::yield_now()
                    }
                    Err((e, _)) => panic!("produce: {e:?}"),
                }
            }
            p.flush(CLIENT_TIMEOUT).expect("producer flush");
            i
        })
    };

    let watermarks = consumer(&bootstrap, &[]);
    let reader = consumer(
        &bootstrap,
        &[
            ("auto.offset.reset", "error"),
            ("enable.partition.eof", "false"),
        ],
    );
    let mut wire = Wire::connect(&bootstrap);
    let started = Instant::now();
    // Rounds that reported an offset fetch did not serve: LATEST, MAX_TIMESTAMP, lookup.
    let mut violations = [0usize; 3];
    let mut example: Option<String> = None;
    let (mut rounds, mut found_by_time, mut last_latest) = (0usize, 0usize, 0i64);
    while rounds < ROUNDS && started.elapsed() < CAP {
        rounds += 1;
        // A record produced a moment ago: likely still in the write buffers.
        let recent_ts = TS_BASE + (enqueued.load(Ordering::Relaxed) - 50).max(0);
        let (_, latest) = watermarks
            .fetch_watermarks(&topic, 0, CLIENT_TIMEOUT)
            .expect("fetch_watermarks");
        let (code, _, max_ts_offset) = list_offset(&mut wire, &topic, MAX_TIMESTAMP);
        assert_eq!(code, 0, "ListOffsets MAX_TIMESTAMP error");
        let (code, found_ts, by_time) = list_offset(&mut wire, &topic, recent_ts);
        assert_eq!(code, 0, "ListOffsets by timestamp error");
        let (code, hw, lso) = fetch_now(&mut wire, &topic, latest);
        assert_eq!(code, 0, "Fetch at the LATEST offset {latest}: error {code}");
        assert_eq!(
            lso, hw,
            "last stable offset (no transactions) is the watermark"
        );
        for (i, bad) in [latest > hw, max_ts_offset >= hw, by_time >= hw]
            .into_iter()
            .enumerate()
        {
            if bad {
                violations[i] += 1;
                example.get_or_insert_with(|| {
                    format!(
                        "LATEST {latest}, MAX_TIMESTAMP offset {max_ts_offset}, \
                         lookup {by_time}; then the fetch high watermark {hw}"
                    )
                });
            }
        }
        if by_time >= 0 {
            found_by_time += 1;
            assert!(
                found_ts >= recent_ts,
                "lookup of {recent_ts} found {found_ts}"
            );
        }
        assert!(
            latest >= last_latest,
            "LATEST went back: {last_latest} -> {latest}"
        );
        last_latest = latest;
        if rounds % CONSUMER_EVERY == 0 {
            assign(&reader, &topic, &[0], Offset::Offset(latest));
            first_record_at(&reader, latest);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let produced = producer_thread.join().expect("producer thread");
    assert!(
        rounds >= CONSUMER_EVERY && last_latest > 0,
        "the load barely ran: {rounds} rounds, LATEST {last_latest}, {produced} produced"
    );
    assert_eq!(
        violations,
        [0, 0, 0],
        "rounds (of {rounds}) whose LATEST / MAX_TIMESTAMP / timestamp lookup named an \
         offset the following fetch did not serve, e.g. {example:?}"
    );
    eprintln!(
        "{rounds} rounds, {produced} records, {found_by_time} timestamp lookups found a record"
    );
}

/// MAX_TIMESTAMP (KIP-734) names the record with the largest timestamp and its
/// timestamp, not the log end; a timestamp lookup names the first record at or after
/// the timestamp; past every timestamp there is nothing (-1).
#[test]
fn max_timestamp_and_timestamp_lookups_name_records() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("max-ts");
    create_topic_blocking(&bootstrap, &topic, 1);
    let mut wire = Wire::connect(&bootstrap);
    assert_eq!(list_offset(&mut wire, &topic, MAX_TIMESTAMP), (0, -1, -1));

    // One record (one batch) per send, acks=all: all of them are visible once acked.
    let p: ThreadedProducer<DefaultProducerContext> = {
        let mut c = base_config(&bootstrap);
        c.set("acks", "all").set("linger.ms", "0");
        c.create().expect("create producer")
    };
    for ts in [
        TS_BASE + 10,
        TS_BASE + 30,
        TS_BASE + 20,
        TS_BASE + 30,
        TS_BASE + 5,
    ] {
        p.send(
            BaseRecord::<(), _>::to(&topic)
                .partition(0)
                .payload("v")
                .timestamp(ts),
        )
        .expect("enqueue");
        p.flush(CLIENT_TIMEOUT).expect("flush");
    }
    assert_eq!(list_offset(&mut wire, &topic, LATEST), (0, -1, 5));
    // The first record with the largest timestamp.
    assert_eq!(
        list_offset(&mut wire, &topic, MAX_TIMESTAMP),
        (0, TS_BASE + 30, 1)
    );
    assert_eq!(
        list_offset(&mut wire, &topic, TS_BASE + 15),
        (0, TS_BASE + 30, 1)
    );
    assert_eq!(
        list_offset(&mut wire, &topic, TS_BASE),
        (0, TS_BASE + 10, 0)
    );
    assert_eq!(list_offset(&mut wire, &topic, TS_BASE + 31), (0, -1, -1));
}

/// A timestamp lookup and MAX_TIMESTAMP name the exact record inside a batch, as Kafka
/// does, also in compressed batches: a consumer seeking by time must not get the
/// earlier records of the batch.
#[test]
fn timestamp_lookups_name_the_record_inside_a_batch() {
    use kafka_protocol::records::Compression;
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    // Record i has timestamp TS_BASE + DELTAS[i]; all in one batch.
    const DELTAS: [i64; 8] = [10, 30, 20, 30, 5, 40, 40, 15];
    for (codec, expect) in [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        let topic = topic_name(&format!("ts-in-batch-{codec}"));
        create_topic_blocking(&bootstrap, &topic, 1);
        let p: ThreadedProducer<DefaultProducerContext> = {
            let mut c = base_config(&bootstrap);
            c.set("acks", "all")
                .set("compression.type", codec)
                // Everything sent before the flush leaves as one batch.
                .set("linger.ms", "60000")
                .set("batch.num.messages", "1000");
            c.create().expect("create producer")
        };
        for d in DELTAS {
            p.send(
                BaseRecord::<(), _>::to(&topic)
                    .partition(0)
                    .payload("value")
                    .timestamp(TS_BASE + d),
            )
            .expect("enqueue");
        }
        p.flush(CLIENT_TIMEOUT).expect("flush");
        assert_eq!(
            stored_batch_codecs(&bootstrap, &topic),
            vec![expect],
            "{codec}: the records are stored as one batch"
        );
        let mut wire = Wire::connect(&bootstrap);
        for (ts, want) in [
            (TS_BASE, (TS_BASE + 10, 0)),
            (TS_BASE + 11, (TS_BASE + 30, 1)),
            (TS_BASE + 31, (TS_BASE + 40, 5)),
            (TS_BASE + 40, (TS_BASE + 40, 5)),
            (MAX_TIMESTAMP, (TS_BASE + 40, 5)),
        ] {
            assert_eq!(
                list_offset(&mut wire, &topic, ts),
                (0, want.0, want.1),
                "{codec}: lookup of {ts}"
            );
        }
        assert_eq!(list_offset(&mut wire, &topic, TS_BASE + 41), (0, -1, -1));

        // A real consumer seeking by time starts at that record.
        let consumer = consumer(&bootstrap, &[]);
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(TS_BASE + 31))
            .expect("tpl");
        let found = consumer
            .offsets_for_times(tpl, CLIENT_TIMEOUT)
            .expect("offsets_for_times");
        let offset = found.elements()[0].offset();
        assert_eq!(offset, Offset::Offset(5), "{codec}: offsets_for_times");
        assign(&consumer, &topic, &[0], offset);
        first_record_at(&consumer, 5);
    }
}
