//! Idempotent-producer state across a broker restart, however much other traffic the
//! partition took since the producer's last batch (Kafka keeps it in producer-state
//! snapshots, `<offset>.snapshot`, and rebuilds from the newest one plus the batches
//! after it; KIP-98 "Idempotent Producer" / ProducerStateManager).
//!
//! In every test an idempotent producer A writes a little, producer B then writes more
//! than the 16 MiB tail an earlier rebuild scanned, and the broker is SIGKILLed and
//! restarted on the same data dir.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{InitProducerIdRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, TimestampType};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
/// What B writes between A's batches: well past the 16 MiB an earlier rebuild scanned.
const OTHER_TRAFFIC_BYTES: usize = 24 << 20;
/// Small enough that the 16 MiB are many offsets: the earlier scan widened its window
/// by offsets, and a few large records put the whole log inside its first window.
const OTHER_VALUE_BYTES: usize = 1 << 10;

/// B: a second idempotent acks=all producer writing `OTHER_TRAFFIC_BYTES` of large
/// values to partition 0, every one acknowledged.
async fn other_traffic(bootstrap: &str, topic: &str) -> usize {
    let b = producer(
        bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("message.max.bytes", "2000000"),
        ],
    );
    let value = vec![b'b'; OTHER_VALUE_BYTES];
    let n = OTHER_TRAFFIC_BYTES / OTHER_VALUE_BYTES;
    let keys: Vec<String> = (0..n).map(|i| format!("b-{i}")).collect();
    let sends: Vec<_> = keys
        .iter()
        .map(|key| {
            b.send(
                FutureRecord::to(topic)
                    .partition(0)
                    .key(key)
                    .payload(&value[..]),
                Duration::from_secs(0),
            )
        })
        .collect();
    for (i, s) in futures::future::join_all(sends)
        .await
        .into_iter()
        .enumerate()
    {
        if let Err((e, _)) = s {
            panic!("B's record {i} not acknowledged: {e}");
        }
    }
    n
}

async fn send_a(a: &FutureProducer, topic: &str, range: std::ops::Range<usize>) -> Vec<i64> {
    let mut offsets = Vec::new();
    for i in range {
        let v = format!("a-{i}");
        match a
            .send(
                FutureRecord::to(topic).partition(0).key("a").payload(&v),
                Duration::from_secs(0),
            )
            .await
        {
            Ok(d) => offsets.push(d.offset),
            Err((e, _)) => panic!("A's record {v} not acknowledged: {e}"),
        }
    }
    offsets
}

/// The scenario with librdkafka: A (the same producer instance, so the same
/// producer id and next sequence) goes on after the restart; its records are all
/// acknowledged, stored once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_idempotent_producer_goes_on_after_a_restart_past_much_other_traffic() {
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("pstate-rdkafka");
    create_topic(&bootstrap, &topic, 1).await;
    let a = producer(
        &bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "0"),
            ("message.timeout.ms", "30000"),
        ],
    );
    let mut a_offsets = send_a(&a, &topic, 0..5).await;
    let b_records = other_traffic(&bootstrap, &topic).await;

    broker.restart();
    // No roll (1 GiB segments) and no clean shutdown: no snapshot, every batch replayed.
    assert!(
        logged(&broker, &topic, "no producer-state snapshot within the log"),
        "the rebuild replays the whole log"
    );
    a_offsets.extend(send_a(&a, &topic, 5..10).await);

    let c = consumer(&bootstrap, &[("fetch.max.bytes", "52428800")]);
    assign(&c, &topic, &[0], rdkafka::Offset::Beginning);
    let stored = consume_to_end(&c, &[0], CONSUME_TIMEOUT);
    assert_eq!(
        stored.len(),
        b_records + 10,
        "every record stored exactly once"
    );
    let a_stored: Vec<(i64, String)> = stored
        .iter()
        .filter(|m| m.key() == Some(b"a"))
        .map(|m| (m.offset(), payload_str(m)))
        .collect();
    let expected: Vec<(i64, String)> = a_offsets
        .iter()
        .enumerate()
        .map(|(i, o)| (*o, format!("a-{i}")))
        .collect();
    assert_eq!(a_stored, expected, "A's records, once each, in order");
    assert!(
        stored.windows(2).all(|w| w[0].offset() < w[1].offset()),
        "offsets increase"
    );
}

/// One idempotent batch of `n` small records with sequences `base_seq..`.
fn idempotent_batch(n: i64, producer_id: i64, epoch: i16, base_seq: i32) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: base_seq.wrapping_add(i as i32),
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from_static(b"wire")),
            value: Some(Bytes::from(format!("seq-{}", i64::from(base_seq) + i))),
            headers: Default::default(),
        })
        .collect();
    let buf = encode_uncompressed(&records);
    buf
}

/// InitProducerId v4 without a transactional id: (producer id, epoch).
fn init_producer(w: &mut Wire) -> (i64, i16) {
    let r = w.call(
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000),
        4,
    );
    assert_eq!(r.error_code, 0, "InitProducerId");
    (r.producer_id.0, r.producer_epoch)
}

/// (error code, base offset) of a one-batch acks=all produce to partition 0.
fn produce(w: &mut Wire, topic: &str, batch: Bytes) -> (i16, i64) {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])]);
    let resp = w.call(&req, 9);
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn high_watermark(bootstrap: &str, topic: &str) -> i64 {
    let c = consumer(bootstrap, &[]);
    c.fetch_watermarks(topic, 0, CLIENT_TIMEOUT)
        .expect("fetch_watermarks")
        .1
}

/// Whether this run of the broker logged `what` about partition 0 of `topic`.
fn logged(broker: &Broker, topic: &str, what: &str) -> bool {
    let dir = format!("{topic}-0");
    broker
        .log_tail(1 << 20)
        .lines()
        .any(|l| l.contains(what) && l.contains(&dir))
}

/// Offsets of the producer-state snapshots in partition 0's directory, ascending.
fn snapshots(broker: &Broker, topic: &str) -> Vec<i64> {
    let dir = broker.data_dir().join("topics").join(format!("{topic}-0"));
    let mut out: Vec<i64> = std::fs::read_dir(&dir)
        .expect("partition dir")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".snapshot")?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// The same at the wire level, where the lost state shows: after the restart, a retry
/// of A's last acknowledged batch must be answered as a duplicate (not stored again),
/// and a sequence gap refused, exactly as before the other traffic. 4 MiB segments:
/// the rolls snapshot the state, and the restart loads the newest snapshot (or, with
/// `damage_newest`, finds it damaged and falls back to the one before).
async fn idle_producer_state_survives_a_restart(damage_newest: bool) {
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("pstate-wire");
    let admin = admin(&bootstrap);
    let new = rdkafka::admin::NewTopic::new(&topic, 1, rdkafka::admin::TopicReplication::Fixed(1))
        .set("segment.bytes", "4194304");
    let created = admin
        .create_topics([&new], &rdkafka::admin::AdminOptions::new())
        .await
        .expect("create_topics");
    assert!(created[0].is_ok(), "create topic: {:?}", created[0]);
    let mut w = Wire::connect(&bootstrap);
    let (pid, epoch) = init_producer(&mut w);
    let first = idempotent_batch(3, pid, epoch, 0);
    let second = idempotent_batch(2, pid, epoch, 3);
    assert_eq!(produce(&mut w, &topic, first), (0, 0));
    assert_eq!(produce(&mut w, &topic, second.clone()), (0, 3));
    drop(w);
    let b_records = other_traffic(&bootstrap, &topic).await as i64;
    let end = 5 + b_records;
    assert_eq!(high_watermark(&bootstrap, &topic), end);
    // Written by a task after the roll that triggers it: wait for two.
    let before = wait_for("two producer snapshots", CLIENT_TIMEOUT, || {
        let s = snapshots(&broker, &topic);
        (s.len() >= 2).then_some(s)
    });
    assert!(before.len() <= 3, "at most 3 snapshots kept: {before:?}");
    assert!(before[0] > 5, "snapshots cover A's batches: {before:?}");

    broker.kill();
    let newest = *snapshots(&broker, &topic).last().unwrap();
    if damage_newest {
        let path = broker
            .data_dir()
            .join("topics")
            .join(format!("{topic}-0"))
            .join(format!("{newest:020}.snapshot"));
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0x40;
        std::fs::write(&path, raw).unwrap();
    }
    broker.restart();
    let log = broker.log_tail(1 << 20);
    assert!(
        !logged(&broker, &topic, "no producer-state snapshot within the log"),
        "a snapshot was loaded:\n{log}"
    );
    assert_eq!(
        logged(&broker, &topic, "producer-state snapshot unusable"),
        damage_newest,
        "the damaged snapshot is reported:\n{log}"
    );
    if damage_newest {
        assert!(
            !snapshots(&broker, &topic).contains(&newest),
            "damaged one removed"
        );
    }
    let mut w = Wire::connect(&bootstrap);
    // A never saw the ack of `second` and retries it.
    let (code, base) = produce(&mut w, &topic, second);
    assert!(
        (code, base) == (0, 3) || code == DUPLICATE_SEQUENCE_NUMBER,
        "retry of A's acknowledged batch after the restart: expected NONE at base offset 3 \
         or DUPLICATE_SEQUENCE_NUMBER, got error {code} base offset {base}"
    );
    assert_eq!(
        high_watermark(&bootstrap, &topic),
        end,
        "A's retried batch stored twice after the restart"
    );
    let (code, _) = produce(&mut w, &topic, idempotent_batch(1, pid, epoch, 9));
    assert_eq!(
        code, OUT_OF_ORDER_SEQUENCE_NUMBER,
        "a sequence gap after the restart"
    );
    assert_eq!(
        produce(&mut w, &topic, idempotent_batch(1, pid, epoch, 5)),
        (0, end),
        "A's next batch continues its sequence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_an_idle_producers_batch_is_a_duplicate_after_a_restart_past_much_other_traffic() {
    idle_producer_state_survives_a_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_newest_snapshot_falls_back_to_an_older_one() {
    idle_producer_state_survives_a_restart(true).await;
}

/// A clean stop (SIGTERM) snapshots the state at the log end, so the next start
/// replays no batch, and the producer's retry is still a duplicate after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_snapshots_the_state_at_the_log_end() {
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("pstate-stop");
    create_topic(&bootstrap, &topic, 1).await;
    let mut w = Wire::connect(&bootstrap);
    let (pid, epoch) = init_producer(&mut w);
    assert_eq!(
        produce(&mut w, &topic, idempotent_batch(3, pid, epoch, 0)),
        (0, 0)
    );
    let second = idempotent_batch(2, pid, epoch, 3);
    assert_eq!(produce(&mut w, &topic, second.clone()), (0, 3));
    drop(w);
    assert!(
        snapshots(&broker, &topic).is_empty(),
        "no roll, no snapshot yet"
    );

    assert!(broker.terminate(CLIENT_TIMEOUT), "clean exit on SIGTERM");
    assert_eq!(
        snapshots(&broker, &topic),
        vec![5],
        "a snapshot at the log end"
    );
    broker.restart();
    assert!(!logged(
        &broker,
        &topic,
        "no producer-state snapshot within the log"
    ));
    let mut w = Wire::connect(&bootstrap);
    let (code, base) = produce(&mut w, &topic, second);
    assert!(
        (code, base) == (0, 3) || code == DUPLICATE_SEQUENCE_NUMBER,
        "retry after a clean stop: error {code} base offset {base}"
    );
    assert_eq!(high_watermark(&bootstrap, &topic), 5, "not stored twice");
}

/// `producer.id.expiration.ms`: a producer idle longer than it is left out of the next
/// snapshot, so after the restart its old batch is no longer known (stored again, as
/// on Kafka once the producer id expired), while the state of one that wrote recently
/// survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_idle_past_the_expiration_are_not_kept_across_a_restart() {
    let expiration = Duration::from_millis(1500);
    let mut broker = Broker::start_with(BrokerOptions {
        extra_args: vec![
            "--producer-id-expiration-ms".into(),
            expiration.as_millis().to_string(),
        ],
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    let topic = topic_name("pstate-expiry");
    create_topic(&bootstrap, &topic, 1).await;
    let mut w = Wire::connect(&bootstrap);
    let mut init = || init_producer(&mut w);
    let (idle, idle_epoch) = init();
    let (busy, busy_epoch) = init();
    let idle_batch = idempotent_batch(2, idle, idle_epoch, 0);
    assert_eq!(produce(&mut w, &topic, idle_batch.clone()), (0, 0));
    // Time passing is the point here: the idle producer's state must age out.
    tokio::time::sleep(expiration + Duration::from_millis(500)).await;
    let busy_batch = idempotent_batch(2, busy, busy_epoch, 0);
    assert_eq!(produce(&mut w, &topic, busy_batch.clone()), (0, 2));
    drop(w);

    assert!(broker.terminate(CLIENT_TIMEOUT), "clean exit on SIGTERM");
    assert_eq!(snapshots(&broker, &topic), vec![4]);
    broker.restart();
    let mut w = Wire::connect(&bootstrap);
    let (code, base) = produce(&mut w, &topic, busy_batch);
    assert!(
        (code, base) == (0, 2) || code == DUPLICATE_SEQUENCE_NUMBER,
        "the busy producer's retry: error {code} base offset {base}"
    );
    assert_eq!(
        produce(&mut w, &topic, idle_batch),
        (0, 4),
        "the expired producer is new again"
    );
}

/// DeleteRecords past the newest snapshot removes it (it can no longer be replayed
/// from); the next append snapshots again, so producers whose batches are all deleted
/// keep their state across a crash, as on Kafka (until they expire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_log_start_passed_is_replaced_by_the_next_append() {
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("pstate-trim");
    create_topic(&bootstrap, &topic, 1).await;
    let mut w = Wire::connect(&bootstrap);
    let (pid, epoch) = init_producer(&mut w);
    assert_eq!(
        produce(&mut w, &topic, idempotent_batch(3, pid, epoch, 0)),
        (0, 0)
    );
    let second = idempotent_batch(2, pid, epoch, 3);
    assert_eq!(produce(&mut w, &topic, second.clone()), (0, 3));
    drop(w);
    assert!(broker.terminate(CLIENT_TIMEOUT), "clean exit on SIGTERM");
    assert_eq!(snapshots(&broker, &topic), vec![5]);
    broker.restart();

    // Other records, then everything so far deleted.
    assert_eq!(raw_produce_code(&bootstrap, &topic, 0, -1, 10_000), 0);
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(8))
        .unwrap();
    let res = admin(&bootstrap)
        .delete_records(&tpl, &rdkafka::admin::AdminOptions::new())
        .await
        .expect("delete_records");
    let el = res.find_partition(&topic, 0).expect("partition in result");
    assert!(el.error().is_ok(), "{:?}", el.error());
    assert!(
        snapshots(&broker, &topic).is_empty(),
        "below the log start: removed"
    );
    assert_eq!(raw_produce_code(&bootstrap, &topic, 0, -1, 10_000), 0);
    wait_for("a snapshot after the append", CLIENT_TIMEOUT, || {
        (snapshots(&broker, &topic) == vec![11]).then_some(())
    });

    broker.restart(); // SIGKILL
    let mut w = Wire::connect(&bootstrap);
    let (code, base) = produce(&mut w, &topic, second);
    assert!(
        (code, base) == (0, 3) || code == DUPLICATE_SEQUENCE_NUMBER,
        "retry of a deleted batch after the restart: error {code} base offset {base}"
    );
    assert_eq!(high_watermark(&bootstrap, &topic), 11, "not stored again");
}
