//! Crash consistency under load: idempotent acks=all producers on several partitions and
//! a consumer group committing offsets run while the broker is SIGKILLed at seeded
//! random moments and restarted, again and again. At the end every partition is read
//! back and checked:
//! - every acknowledged record is present exactly once, at the offset its ack named;
//! - no record is stored twice (idempotence holds across crashes);
//! - each producer's records are in send order within a partition;
//! - the group's committed offsets, read back after every restart, never went
//!   backwards from what a successful commit reported;
//! - every record the group consumer saw is in the final log at the offset it saw it
//!   at (no reads of data a crash then took back).
//!
//! `RUNNEL_CRASH_KILLS` (default 20) and `RUNNEL_CRASH_SEED` (default: from the clock,
//! printed) make longer local runs and replays possible:
//! `RUNNEL_CRASH_KILLS=200 cargo test --release --test fault_crash_consistency -- --nocapture`.
//! `RUNNEL_CRASH_KEEP=DIR` copies the `__consumer_offsets` partitions and the broker
//! logs into `DIR/kill<N>` whenever committed offsets went backwards at kill N.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
const PRODUCERS: usize = 2;
const GROUP: &str = "crash-group";
/// Upper bound of the time between a restart and the next kill.
const KILL_GAP_MS_MAX: u64 = 1500;
const KILL_GAP_MS_MIN: u64 = 100;
/// How long producers may take to drain their in-flight records after the last restart.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Unacknowledged records one producer may have outstanding.
const IN_FLIGHT_MAX: u64 = 2000;

fn payload(producer: usize, seq: u64) -> String {
    // Some bulk so batches span buffer and block boundaries.
    format!("p{producer}-s{seq:09}-{}", "x".repeat((seq % 200) as usize))
}

/// `p{producer}-s{seq}` of a payload.
fn parse(payload: &str) -> (usize, u64) {
    let mut it = payload.split('-');
    let p = it.next().and_then(|s| s.strip_prefix('p')).unwrap();
    let s = it.next().and_then(|s| s.strip_prefix('s')).unwrap();
    (p.parse().unwrap(), s.parse().unwrap())
}

fn run_producer(
    bootstrap: String,
    topic: String,
    id: usize,
    stop: Arc<AtomicBool>,
    acks: Arc<Acks>,
) -> u64 {
    let mut c = base_config(&bootstrap);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // Outlives every outage of this test: a record is acked or failed, never dropped.
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
        let value = payload(id, seq);
        let partition = (seq % PARTITIONS as u64) as i32;
        acks.outstanding.fetch_add(1, Ordering::Relaxed);
        match producer.send(
            BaseRecord::<(), str>::to(&topic)
                .partition(partition)
                .payload(&value),
        ) {
            Ok(()) => seq += 1,
            Err((e, _)) => {
                acks.outstanding.fetch_sub(1, Ordering::Relaxed);
                assert!(
                    matches!(
                        e,
                        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ),
                    "send: {e:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    producer
        .flush(DRAIN_TIMEOUT)
        .expect("producer could not drain after the last restart");
    if let Some(e) = producer.client().fatal_error() {
        panic!("producer {id} hit a fatal idempotence error: {e:?}");
    }
    seq
}

/// What the group consumer saw and what its commits reported.
#[derive(Default)]
struct GroupLog {
    /// (partition, offset) -> payload of every record consumed.
    seen: HashMap<(i32, i64), String>,
    /// Highest offset per partition a commit reported success for.
    committed_ok: BTreeMap<i32, i64>,
    commits_ok: u64,
}

fn run_group_consumer(
    bootstrap: String,
    topic: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<GroupLog>>,
) {
    let mut c = base_config(&bootstrap);
    c.set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "100");
    let consumer: BaseConsumer = c.create().expect("create group consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                log.lock()
                    .unwrap()
                    .seen
                    .insert((m.partition(), m.offset()), value);
            }
            // Outages show up as transport errors; the client reconnects by itself.
            Some(Err(_)) | None => {}
        }
        if last_commit.elapsed() >= Duration::from_millis(200) {
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
            if tpl.count() == 0 {
                continue;
            }
            if consumer.commit(&tpl, CommitMode::Sync).is_ok() {
                let mut log = log.lock().unwrap();
                log.commits_ok += 1;
                for e in tpl.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        let c = log.committed_ok.entry(e.partition()).or_insert(o);
                        *c = (*c).max(o);
                    }
                }
            }
        }
    }
}

/// The group's committed offsets as the broker reports them (OffsetFetch).
fn committed_offsets(bootstrap: &str, topic: &str) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = {
        let mut c = base_config(bootstrap);
        c.set("group.id", GROUP).set("enable.auto.commit", "false");
        c.create().unwrap()
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        match c.committed_offsets(tpl.clone(), Duration::from_secs(5)) {
            Ok(got) => {
                return got
                    .elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some((e.partition(), o)),
                        _ => None,
                    })
                    .collect()
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "OffsetFetch failed until the deadline: {e:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn acknowledged_records_survive_repeated_sigkill_exactly_once() {
    let kills: usize = std::env::var("RUNNEL_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("RUNNEL_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!(
        "crash consistency: seed {seed} (replay with RUNNEL_CRASH_SEED={seed}), {kills} kills"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut broker = Broker::start_with(BrokerOptions::default().cores(2));
    let bootstrap = broker.bootstrap();
    let topic = topic_name("crash-consistency");
    create_topic_blocking(&bootstrap, &topic, PARTITIONS);

    let stop = Arc::new(AtomicBool::new(false));
    let acks: Vec<Arc<Acks>> = (0..PRODUCERS).map(|_| Arc::default()).collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            let (b, t, s, a) = (
                bootstrap.clone(),
                topic.clone(),
                stop.clone(),
                acks[id].clone(),
            );
            std::thread::spawn(move || run_producer(b, t, id, s, a))
        })
        .collect();
    let group_log = Arc::new(Mutex::new(GroupLog::default()));
    let group = {
        let (b, t, s, l) = (
            bootstrap.clone(),
            topic.clone(),
            stop.clone(),
            group_log.clone(),
        );
        std::thread::spawn(move || run_group_consumer(b, t, s, l))
    };

    let started = Instant::now();
    let mut backwards = Vec::new();
    for kill in 0..kills {
        let gap = rng.gen_range(KILL_GAP_MS_MIN..=KILL_GAP_MS_MAX);
        std::thread::sleep(Duration::from_millis(gap));
        // Commits the group reported as successful before the kill must all survive it.
        let before = group_log.lock().unwrap().committed_ok.clone();
        broker.restart();
        let after = committed_offsets(&bootstrap, &topic);
        let backwards_before = backwards.len();
        for (p, o) in &before {
            let now = after.get(p).copied().unwrap_or(-1);
            if now < *o {
                backwards.push(format!(
                    "kill {kill}: partition {p} committed {o} before, {now} after"
                ));
            }
        }
        if backwards.len() > backwards_before {
            if let Ok(keep) = std::env::var("RUNNEL_CRASH_KEEP") {
                let to = std::path::Path::new(&keep).join(format!("kill{kill}"));
                let _ = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "mkdir -p {to} && cp -a {data}/topics/__consumer_offsets-* {to}/ && cp -a {logs} {to}/logs",
                        to = to.display(),
                        data = broker.data_dir().display(),
                        logs = broker.log_dir().display()
                    ))
                    .status();
                eprintln!("kept the data dir in {}", to.display());
            }
        }
        assert!(
            !producers.iter().any(|p| p.is_finished()) && !group.is_finished(),
            "a client thread died (kill {kill})"
        );
    }
    let load_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<u64> = producers
        .into_iter()
        .map(|p| p.join().expect("producer thread"))
        .collect();
    group.join().expect("group consumer thread");

    // Read everything back.
    let reader = consumer(&bootstrap, &[]);
    let parts: Vec<i32> = (0..PARTITIONS).collect();
    assign(&reader, &topic, &parts, Offset::Beginning);
    let stored = consume_to_end(&reader, &parts, Duration::from_secs(120));
    let mut at: HashMap<(i32, i64), String> = HashMap::new();
    let mut copies: HashMap<String, u32> = HashMap::new();
    for m in &stored {
        let v = payload_str(m);
        *copies.entry(v.clone()).or_default() += 1;
        at.insert((m.partition(), m.offset()), v);
    }
    let duplicated = copies.values().filter(|&&n| n > 1).count();

    let acked: Vec<(i32, i64, String)> = acks
        .iter()
        .flat_map(|a| a.acked.lock().unwrap().clone())
        .collect();
    let failed: u64 = acks.iter().map(|a| a.failures() as u64).sum();
    let mut lost = Vec::new();
    for (p, o, v) in &acked {
        if at.get(&(*p, *o)) != Some(v) {
            lost.push(format!(
                "{v} acked at {p}/{o}, stored there: {:?}",
                at.get(&(*p, *o))
            ));
        }
    }

    // Per partition, each producer's records appear in send order.
    let mut out_of_order = Vec::new();
    let mut last_seq: HashMap<(i32, usize), (u64, i64)> = HashMap::new();
    for m in &stored {
        let (id, seq) = parse(&payload_str(m));
        if let Some((prev, prev_off)) = last_seq.insert((m.partition(), id), (seq, m.offset())) {
            if seq <= prev {
                out_of_order.push(format!(
                    "partition {}: p{id} seq {seq} at offset {} after seq {prev} at {prev_off}",
                    m.partition(),
                    m.offset()
                ));
            }
        }
    }

    let group_log = group_log.lock().unwrap();
    let phantom: Vec<String> = group_log
        .seen
        .iter()
        .filter(|(k, v)| at.get(k) != Some(*v))
        .map(|((p, o), v)| format!("group read {v} at {p}/{o}, stored: {:?}", at.get(&(*p, *o))))
        .take(5)
        .collect();
    let final_committed = committed_offsets(&bootstrap, &topic);

    eprintln!(
        "crash consistency: seed {seed} kills {kills} in {:.1}s; sent {} acked {} failed {failed}; \
         found {} (distinct {}); lost {} duplicated {duplicated} out_of_order {}; \
         group: consumed {} commits {} committed {:?} backwards {} phantom_reads {}",
        load_time.as_secs_f64(),
        sent.iter().sum::<u64>(),
        acked.len(),
        stored.len(),
        copies.len(),
        lost.len(),
        out_of_order.len(),
        group_log.seen.len(),
        group_log.commits_ok,
        final_committed,
        backwards.len(),
        phantom.len(),
    );
    assert!(
        lost.is_empty(),
        "seed {seed}: acknowledged records lost: {:?}",
        &lost[..lost.len().min(5)]
    );
    assert_eq!(duplicated, 0, "seed {seed}: records stored more than once");
    assert!(
        out_of_order.is_empty(),
        "seed {seed}: {:?}",
        &out_of_order[..out_of_order.len().min(5)]
    );
    assert!(
        backwards.is_empty(),
        "seed {seed}: committed offsets went backwards: {backwards:?}"
    );
    assert!(
        phantom.is_empty(),
        "seed {seed}: the group read records a crash took back: {phantom:?}"
    );
    assert!(!acked.is_empty(), "seed {seed}: nothing was acknowledged");
    assert!(
        group_log.commits_ok > 0,
        "seed {seed}: the group never committed"
    );
}

/// A consumer sees only what a SIGKILL cannot take back. Records produced with acks=1
/// are answered from the broker's write buffer; a consumer that read them there would,
/// after a crash took them back, find its position (and its committed offset) past the
/// log end and be reset (auto.offset.reset), committing older offsets: the committed
/// offsets the test above saw "go backwards". Every record read before the kill must be
/// in the log after the restart, at the offset it was read at.
#[test]
fn records_a_consumer_read_survive_sigkill() {
    const REQUESTS: usize = 20;
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("read-survives-kill");
    create_topic_blocking(&bootstrap, &topic, 1);
    for _ in 0..REQUESTS {
        // Three small records each: all of them fit one write buffer.
        assert_eq!(raw_produce_code(&bootstrap, &topic, 0, 1, 5000), 0);
    }
    let reader = consumer(&bootstrap, &[]);
    assign(&reader, &topic, &[0], Offset::Beginning);
    let read: Vec<(i64, String)> =
        consume_at_least_to_end(&reader, &[0], REQUESTS * 3, Duration::from_secs(30))
            .iter()
            .map(|m| (m.offset(), payload_str(m)))
            .collect();
    assert_eq!(read.len(), REQUESTS * 3);
    drop(reader);

    broker.restart();
    let reader = consumer(&bootstrap, &[]);
    assign(&reader, &topic, &[0], Offset::Beginning);
    let stored: HashMap<i64, String> = consume_to_end(&reader, &[0], Duration::from_secs(30))
        .iter()
        .map(|m| (m.offset(), payload_str(m)))
        .collect();
    let gone: Vec<_> = read
        .iter()
        .filter(|(o, v)| stored.get(o) != Some(v))
        .take(5)
        .collect();
    assert!(
        gone.is_empty(),
        "{} of {} records read before the kill are not in the log after it, e.g. {gone:?}",
        read.iter()
            .filter(|(o, v)| stored.get(o) != Some(v))
            .count(),
        read.len()
    );
}
