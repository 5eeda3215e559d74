//! Issue 7's must-show: a three-broker cluster keeps every acknowledged write while
//! brokers are SIGKILLed and restarted one at a time, the partition leader included,
//! many times. An idempotent acks=all producer runs throughout; a consumer group
//! commits as it goes. Afterwards every acknowledged record is there exactly once, at
//! the offset it was acknowledged with, every replica holds the same batches, and the
//! group's committed offsets survived.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const BROKERS: usize = 3;
const PARTITIONS: i32 = 3;
/// Kill/restart rounds; every other one kills the leader of partition 0.
const ROUNDS: usize = 10;
const GROUP: &str = "chaos-group";
/// Records the producer may have unacknowledged at once.
const IN_FLIGHT_MAX: u64 = 2000;
/// Acks that must arrive while a broker is down (the cluster keeps serving).
const ACKS_WHILE_DOWN: usize = 200;

fn run_producer(bootstrap: String, topic: String, stop: Arc<AtomicBool>, acks: Arc<Acks>) {
    let mut c = base_config(&bootstrap);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // Outlives every failover here: a record is acked or failed, never dropped.
        .set("message.timeout.ms", "120000")
        .set("request.timeout.ms", "5000")
        .set("retry.backoff.ms", "50");
    let producer: ThreadedProducer<AckContext> = c
        .create_with_context(AckContext(acks.clone()))
        .expect("create producer");
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if acks.outstanding.load(Ordering::Relaxed) >= IN_FLIGHT_MAX {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let value = format!("s{seq:09}-{}", "x".repeat((seq % 100) as usize));
        let partition = (seq % PARTITIONS as u64) as i32;
        acks.outstanding.fetch_add(1, Ordering::Relaxed);
        match producer.send(
            BaseRecord::<(), str>::to(&topic)
                .partition(partition)
                .payload(&value),
        ) {
            Ok(()) => seq += 1,
            Err(_) => {
                acks.outstanding.fetch_sub(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // A steady, modest rate: the test is about correctness, not throughput.
        if seq % 20 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    producer
        .flush(Duration::from_secs(90))
        .expect("producer could not drain after the last restart");
    if let Some(e) = producer.client().fatal_error() {
        panic!("producer hit a fatal idempotence error: {e:?}");
    }
}

/// Consumes in the group and commits its position every 300 ms; returns the last
/// positions a commit succeeded for.
fn run_group_consumer(
    bootstrap: String,
    topic: String,
    stop: Arc<AtomicBool>,
) -> BTreeMap<i32, i64> {
    let mut c = base_config(&bootstrap);
    c.set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "100");
    let consumer: BaseConsumer = c.create().expect("create group consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut committed = BTreeMap::new();
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let _ = consumer.poll(Duration::from_millis(100));
        if last_commit.elapsed() < Duration::from_millis(300) {
            continue;
        }
        last_commit = Instant::now();
        let Ok(position) = consumer.position() else {
            continue;
        };
        let mut tpl = TopicPartitionList::new();
        for e in position.elements() {
            if let Offset::Offset(o) = e.offset() {
                tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))
                    .unwrap();
            }
        }
        if tpl.count() > 0 && consumer.commit(&tpl, CommitMode::Sync).is_ok() {
            for e in tpl.elements() {
                if let Offset::Offset(o) = e.offset() {
                    committed.insert(e.partition(), o);
                }
            }
        }
    }
    committed
}

/// Waits until broker `bootstrap` reports every partition with a leader and all
/// `BROKERS` replicas in sync.
fn wait_fully_in_sync(bootstrap: &str, topic: &str) -> TopicView {
    wait_for("every replica back in sync", CLUSTER_TIMEOUT * 2, || {
        topic_view(bootstrap, topic).filter(|v| {
            v.len() == PARTITIONS as usize
                && v.values()
                    .all(|(leader, _, isr)| *leader >= 0 && isr.len() == BROKERS)
        })
    })
}

#[test]
fn ten_sigkill_restarts_under_acks_all_lose_no_acknowledged_record() {
    let mut cluster = Cluster::start(BROKERS, BrokerOptions::default());
    cluster.wait_registered();
    let all = cluster.bootstrap_all();
    let topic = topic_name("chaos");
    create_replicated_with(
        &cluster.brokers[0].bootstrap(),
        &topic,
        PARTITIONS,
        BROKERS as i32,
        &[("min.insync.replicas", "2")],
    )
    .expect("create an RF=3 topic");
    wait_fully_in_sync(&cluster.brokers[0].bootstrap(), &topic);

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Acks::default());
    let producer = {
        let (b, t, s, a) = (all.clone(), topic.clone(), stop.clone(), acks.clone());
        std::thread::spawn(move || run_producer(b, t, s, a))
    };
    let group = {
        let (b, t, s) = (all.clone(), topic.clone(), stop.clone());
        std::thread::spawn(move || run_group_consumer(b, t, s))
    };
    let acked_count = || acks.acked.lock().unwrap().len();
    wait_for("first acks", CLUSTER_TIMEOUT, || {
        (acked_count() >= 500).then_some(())
    });

    let mut killed_leaders = 0;
    for round in 0..ROUNDS {
        let survivor = cluster.brokers[round % BROKERS].bootstrap();
        let view = wait_fully_in_sync(&survivor, &topic);
        let victim = if round % 2 == 0 {
            killed_leaders += 1;
            view[&0].0
        } else {
            ((round / 2) % BROKERS) as i32 + 1
        };
        cluster.node(victim).kill();
        let before = acked_count();
        // Two brokers are a majority and meet min.insync.replicas=2: writes go on.
        wait_for(
            &format!("round {round}: acks while broker {victim} is down"),
            CLUSTER_TIMEOUT * 2,
            || (acked_count() >= before + ACKS_WHILE_DOWN).then_some(()),
        );
        cluster.node(victim).restart();
        eprintln!(
            "round {round}: killed and restarted broker {victim}; {} acked, {} failed",
            acked_count(),
            acks.failures()
        );
    }
    assert!(killed_leaders >= ROUNDS / 2);
    let final_view = wait_fully_in_sync(&cluster.brokers[0].bootstrap(), &topic);
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("producer thread");
    let committed = group.join().expect("group consumer thread");
    let acked = acks.acked.lock().unwrap().clone();
    assert_eq!(acks.failures(), 0, "no record may fail");

    // Every acknowledged record is there once, at its acknowledged offset.
    let reader = consumer(&all, &[]);
    assign(
        &reader,
        &topic,
        &(0..PARTITIONS).collect::<Vec<_>>(),
        Offset::Beginning,
    );
    let read = consume_to_end(
        &reader,
        &(0..PARTITIONS).collect::<Vec<_>>(),
        CONSUME_TIMEOUT * 2,
    );
    let mut at: HashMap<(i32, i64), String> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    for m in &read {
        let v = payload_str(m);
        assert!(seen.insert(v.clone()), "record {v} is stored twice");
        at.insert((m.partition(), m.offset()), v);
    }
    for (p, o, v) in &acked {
        assert_eq!(
            at.get(&(*p, *o)),
            Some(v),
            "acked record {v} missing at {p}/{o}"
        );
    }
    // In order: per partition, acknowledged offsets follow the send order.
    for p in 0..PARTITIONS {
        let mut offsets: Vec<(String, i64)> = acked
            .iter()
            .filter(|(q, _, _)| *q == p)
            .map(|(_, o, v)| (v.clone(), *o))
            .collect();
        offsets.sort();
        assert!(
            offsets.windows(2).all(|w| w[0].1 < w[1].1),
            "partition {p} out of order"
        );
    }

    // The group's last successful commits are what it reads back.
    let check = {
        let mut c = base_config(&all);
        c.set("group.id", GROUP).set("enable.auto.commit", "false");
        c.create::<BaseConsumer>().expect("consumer")
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(&topic, p);
    }
    let stored = check
        .committed_offsets(tpl, CLIENT_TIMEOUT)
        .expect("committed offsets");
    assert!(!committed.is_empty(), "the group committed during the test");
    for (p, o) in &committed {
        let e = stored.find_partition(&topic, *p).expect("partition");
        assert_eq!(e.offset(), Offset::Offset(*o), "partition {p} commit lost");
    }
    drop(check);
    drop(reader);

    // Replicas agree batch by batch below the high watermark.
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| {
            let last = read
                .iter()
                .filter(|m| m.partition() == p)
                .map(|m| m.offset())
                .max()
                .unwrap_or(-1);
            (p, last)
        })
        .collect();
    for b in cluster.brokers.iter_mut() {
        assert!(b.terminate(Duration::from_secs(30)), "clean stop");
    }
    for p in 0..PARTITIONS {
        let replicas = &final_view[&p].1;
        let mut lists = Vec::new();
        for id in replicas {
            let mut batches = dump_partition(cluster.node(*id).data_dir(), &topic, p);
            batches.retain(|b| b.1 <= ends[&p]);
            lists.push((*id, batches));
        }
        let (first_id, first) = &lists[0];
        assert_eq!(
            first.last().map(|b| b.1),
            Some(ends[&p]),
            "broker {first_id} partition {p} ends early"
        );
        for (id, l) in &lists[1..] {
            assert_eq!(
                l, first,
                "partition {p}: broker {id} differs from broker {first_id}"
            );
        }
        if p == 0 {
            // Its leader was killed again and again: later batches carry later epochs.
            assert!(
                first.last().unwrap().2 >= 5,
                "partition 0 epochs: {first:?}"
            );
        }
    }
}
