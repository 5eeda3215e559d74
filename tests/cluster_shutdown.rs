//! Controlled shutdown (issue 7; Kafka's ControlledShutdown, KRaft's BrokerHeartbeat
//! `wantShutDown`): a SIGTERMed cluster broker hands the partitions it leads to other
//! in-sync replicas before it exits, so an idempotent acks=all producer running
//! throughout sees a leader change, not errors, and loses nothing; the broker exits 0
//! and rejoins the in-sync sets when it is started again.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::MetadataRequest;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

const PARTITIONS: i32 = 3;
/// The controller fences a broker it has not heard from for this long
/// (`replication::quorum::BROKER_SESSION_TIMEOUT`). A crashed broker's leaderships
/// cannot move sooner; a controlled shutdown's must.
const SESSION_TIMEOUT: Duration = Duration::from_secs(3);
/// Acks the producer must get before the SIGTERM and again after the exit.
const ACKS_PER_PHASE: usize = 100;
/// Records the producer may have unacknowledged at once.
const IN_FLIGHT_MAX: u64 = 500;

/// (leader, leader epoch, in-sync replicas) per partition, as broker `bootstrap`
/// itself reports `topic` (raw Metadata v12). `None` while it does not know it.
fn states(bootstrap: &str, topic: &str) -> Option<BTreeMap<i32, (i32, i32, Vec<i32>)>> {
    let mut wire = Wire::connect(bootstrap);
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name_of(topic)))
        ]))
        .with_allow_auto_topic_creation(false);
    let resp = wire.call(&req, 12);
    let t = resp.topics.first()?;
    if t.error_code != 0 {
        return None;
    }
    Some(
        t.partitions
            .iter()
            .map(|p| {
                let isr = p.isr_nodes.iter().map(|b| b.0).collect();
                (p.partition_index, (p.leader_id.0, p.leader_epoch, isr))
            })
            .collect(),
    )
}

/// The same states from every broker in `addrs`.
fn agreed(addrs: &[String], topic: &str) -> Option<BTreeMap<i32, (i32, i32, Vec<i32>)>> {
    let first = states(&addrs[0], topic)?;
    addrs[1..]
        .iter()
        .all(|a| states(a, topic).as_ref() == Some(&first))
        .then_some(first)
}

/// Produces `p<partition>-<n>` round robin over the partitions until `stop`, then
/// waits for every delivery report. Returns how many records it sent per partition.
fn run_producer(
    bootstrap: String,
    topic: String,
    stop: Arc<AtomicBool>,
    acks: Arc<Acks>,
) -> Vec<u64> {
    let mut c = base_config(&bootstrap);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // Longer than this test: a record is acknowledged or failed, never dropped.
        .set("message.timeout.ms", "60000")
        .set("request.timeout.ms", "10000")
        .set("retry.backoff.ms", "20");
    let producer: ThreadedProducer<AckContext> = c
        .create_with_context(AckContext(acks.clone()))
        .expect("create producer");
    let mut sent = vec![0u64; PARTITIONS as usize];
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if acks.outstanding.load(Ordering::Relaxed) >= IN_FLIGHT_MAX {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let p = (i % PARTITIONS as usize) as i32;
        let payload = format!("p{p}-{}", sent[p as usize]);
        acks.outstanding.fetch_add(1, Ordering::Relaxed);
        match producer.send(
            BaseRecord::to(&topic)
                .partition(p)
                .payload(&payload)
                .key("k"),
        ) {
            Ok(()) => {
                sent[p as usize] += 1;
                i += 1;
            }
            Err((e, _)) => {
                acks.outstanding.fetch_sub(1, Ordering::Relaxed);
                panic!("enqueue {payload}: {e}");
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("every delivery reported");
    sent
}

#[test]
fn sigterm_hands_leadership_over_before_the_session_timeout_and_the_producer_sees_no_error() {
    let mut cluster = Cluster::start(3, BrokerOptions::default());
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.bootstrap()).collect();
    let controller = cluster.wait_registered();
    let topic = topic_name("shutdown");
    create_replicated(&addrs[0], &topic, PARTITIONS, 3).expect("create the RF=3 topic");
    let before = wait_for("every replica in sync everywhere", CLUSTER_TIMEOUT, || {
        let v = agreed(&addrs, &topic)?;
        v.values()
            .all(|(l, _, isr)| *l > 0 && isr.len() == 3)
            .then_some(v)
    });
    // Leaders go round robin, so the metadata leader leads a partition too: stopping
    // it also hands the metadata quorum over.
    let victim = controller;
    let led: Vec<i32> = before
        .iter()
        .filter(|(_, (l, _, _))| *l == victim)
        .map(|(p, _)| *p)
        .collect();
    assert!(!led.is_empty(), "broker {victim} leads nothing: {before:?}");

    let acks = Arc::new(Acks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (b, t, s, a) = (
            cluster.bootstrap_all(),
            topic.clone(),
            stop.clone(),
            acks.clone(),
        );
        std::thread::spawn(move || run_producer(b, t, s, a))
    };
    wait_for("acks before the SIGTERM", CLUSTER_TIMEOUT, || {
        (acks.count() >= ACKS_PER_PHASE).then_some(())
    });

    let survivors: Vec<String> = (1..=3)
        .filter(|id| *id != victim)
        .map(|id| addrs[(id - 1) as usize].clone())
        .collect();
    let signalled = Instant::now();
    cluster.node(victim).sigterm();
    // A crash moves nothing until the controller has not heard from the broker for the
    // session timeout; the handover must be done before that could even start.
    let after = wait_for(
        "leadership handed over before the session timeout",
        SESSION_TIMEOUT,
        || {
            let v = agreed(&survivors, &topic)?;
            v.values()
                .all(|(leader, _, isr)| *leader > 0 && *leader != victim && !isr.contains(&victim))
                .then_some(v)
        },
    );
    eprintln!(
        "leadership moved {:?} after the SIGTERM: {before:?} -> {after:?}",
        signalled.elapsed()
    );
    for p in &led {
        let (old_leader, old_epoch, old_isr) = &before[p];
        let (leader, epoch, isr) = &after[p];
        assert_eq!(*old_leader, victim);
        assert!(
            old_isr.contains(leader),
            "partition {p}: {leader} not from {old_isr:?}"
        );
        assert!(
            epoch > old_epoch,
            "partition {p}: epoch {old_epoch} -> {epoch}"
        );
        assert!(!isr.contains(&victim), "partition {p}: ISR {isr:?}");
    }
    let status = cluster
        .node(victim)
        .wait_exit(Duration::from_secs(30))
        .expect("the broker exits after the handover");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");

    // Two brokers keep serving: the producer goes on.
    let acked_at_exit = acks.count();
    wait_for("acks after the exit", CLUSTER_TIMEOUT, || {
        (acks.count() >= acked_at_exit + ACKS_PER_PHASE).then_some(())
    });

    // Back with its data: it catches up and rejoins every in-sync set.
    cluster.node(victim).restart();
    wait_for(
        "the restarted broker back in every ISR",
        CLUSTER_TIMEOUT,
        || {
            let v = agreed(&addrs, &topic)?;
            v.values()
                .all(|(l, _, isr)| *l > 0 && isr.len() == 3)
                .then_some(())
        },
    );

    stop.store(true, Ordering::Relaxed);
    let sent = producer.join().expect("producer thread");
    let failed = acks.failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "delivery errors: {failed:?}");
    let acked = acks.acked.lock().unwrap().clone();
    assert_eq!(
        acked.len() as u64,
        sent.iter().sum::<u64>(),
        "every record acknowledged"
    );

    // Every acknowledged record is there once, in the order sent, at its acked offset.
    let c = consumer(&cluster.bootstrap_all(), &[]);
    let all: Vec<i32> = (0..PARTITIONS).collect();
    assign(&c, &topic, &all, rdkafka::Offset::Beginning);
    let total = acked.len();
    let got = consume_at_least_to_end(&c, &all, total, CONSUME_TIMEOUT);
    let mut by_partition: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for m in &got {
        by_partition
            .entry(m.partition())
            .or_default()
            .push((m.offset(), payload_str(m)));
    }
    for p in 0..PARTITIONS {
        let stored = by_partition.remove(&p).unwrap_or_default();
        let want: Vec<String> = (0..sent[p as usize]).map(|n| format!("p{p}-{n}")).collect();
        let values: Vec<String> = stored.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(
            values, want,
            "partition {p}: exactly the records sent, once, in order"
        );
        let offsets: BTreeMap<&str, i64> = stored.iter().map(|(o, v)| (v.as_str(), *o)).collect();
        for (ap, ao, av) in acked.iter().filter(|(ap, _, _)| *ap == p) {
            assert_eq!(
                offsets.get(av.as_str()),
                Some(ao),
                "{av} acked at {ap}/{ao}"
            );
        }
    }
    drop(c);

    // Stopping the whole cluster: each broker hands over to those still up, and the
    // last one, with nobody left, does not wait for a quorum that is gone.
    for id in (1..=3).filter(|id| *id != victim).chain([victim]) {
        let started = Instant::now();
        cluster.node(id).sigterm();
        let status = cluster
            .node(id)
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("broker {id} exits on SIGTERM"));
        assert_eq!(status.code(), Some(0), "broker {id}: {status:?}");
        eprintln!("broker {id} stopped in {:?}", started.elapsed());
    }
}
