//! Deleting topics must neither stall a broker nor leave their data behind.
//!
//! A follower's replica fetcher whose partitions vanish mid-deletion must idle or end,
//! never loop without yielding (on a glommio shard that starves Raft and the signal
//! poll: the cluster loses quorum and SIGTERM does nothing), and a deleted log's files
//! go in the background, logged, without holding the shard. Directories a deletion
//! left behind (a crash, a stall) are removed at the next start, once the metadata
//! image has been replayed, and nothing a hosted partition needs goes with them.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::admin::AdminOptions;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Partitions per deleted topic: several per (follower, leader) pair, so a fetcher
/// still follows some of a topic's partitions while the others are being deleted.
const PARTITIONS: i32 = 12;
/// Small segments, so each partition has many files and its deletion takes a while.
const SEGMENT_BYTES: &str = "32768";
const RECORD_BYTES: usize = 4 << 10;
/// About 5 MiB per topic.
const RECORDS_PER_TOPIC: usize = 1280;
/// Produced to the topics while they are deleted, so followers are fetching (and
/// getting answers) in the middle of the deletion.
const CHURN_RECORD_BYTES: usize = 512;
/// Deletion, its background file removal and a stalled shard's recovery all fit in
/// this on a loaded 2-core box; a spinning broker never gets there.
const DELETION_TIMEOUT: Duration = Duration::from_secs(60);
/// The CPU window: a broker idle after the deletion uses a few percent of a core; a
/// spinning shard uses all of one.
const CPU_WINDOW: Duration = Duration::from_secs(3);
const CPU_SHARE_MAX: f64 = 0.5;
const SIGTERM_EXIT_MAX: Duration = Duration::from_secs(30);

/// Names under `data/topics` that belong to `topic` (its partition directories, and
/// `.delete` ones renamed from them).
fn dirs_of(data_dir: &Path, topic: &str) -> Vec<String> {
    let prefix = format!("{topic}-");
    std::fs::read_dir(data_dir.join("topics"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn produce_all(bootstrap: &str, topic: &str, n: usize, value: impl Fn(usize) -> Vec<u8>) {
    let mut c = base_config(bootstrap);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "65536");
    let p: BaseProducer = c.create().expect("producer");
    for i in 0..n {
        let key = format!("k{i}");
        let payload = value(i);
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert!(Instant::now() < deadline, "enqueue to {topic}: {e}");
                    record = r;
                    p.poll(Duration::from_millis(50));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("acks=all produce to {topic}: {e}"));
}

/// Produces (acks=1) round robin to `topics` until `stop`; errors (the topics going
/// away) are expected and ignored.
fn churn(
    bootstrap: String,
    topics: Vec<String>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut c = base_config(&bootstrap);
        c.set("acks", "1")
            .set("message.timeout.ms", "5000")
            .set("linger.ms", "1");
        let p: BaseProducer = c.create().expect("producer");
        let payload = vec![7u8; CHURN_RECORD_BYTES];
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("c{i}");
            let _ = p.send(
                BaseRecord::to(&topics[i % topics.len()])
                    .key(&key)
                    .payload(&payload),
            );
            p.poll(Duration::from_millis(2));
            i += 1;
        }
        p.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        let _ = p.flush(Duration::from_secs(5));
    })
}

/// The log end of `topic`-`partition` in exactly broker `bootstrap`'s replica
/// (ListOffsets LATEST as a debugging consumer, replica id -2, which any replica
/// answers).
fn replica_log_end(bootstrap: &str, topic: &str, partition: i32) -> i64 {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{BrokerId, ListOffsetsRequest};
    let mut wire = Wire::connect(bootstrap);
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-2))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name_of(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-1)])]);
    let p = &wire.call(&req, 7).topics[0].partitions[0];
    if p.error_code == 0 {
        p.offset
    } else {
        -1
    }
}

/// Whether the broker at `bootstrap` answers a Metadata request within a few seconds.
fn answers_metadata(bootstrap: &str) -> bool {
    let c = consumer(bootstrap, &[]);
    use rdkafka::consumer::Consumer;
    c.fetch_metadata(None, Duration::from_secs(5)).is_ok()
}

#[test]
fn deleting_big_replicated_topics_leaves_every_broker_serving_idle_and_clean() {
    let mut cluster = Cluster::start(3, BrokerOptions::default().auto_create_topics(false));
    cluster.wait_registered();
    let all = cluster.bootstrap_all();
    let topics = [topic_name("big-a"), topic_name("big-b")];
    for t in &topics {
        create_replicated_with(&all, t, PARTITIONS, 3, &[("segment.bytes", SEGMENT_BYTES)])
            .unwrap_or_else(|e| panic!("create {t}: {e:?}"));
    }
    for t in &topics {
        produce_all(&all, t, RECORDS_PER_TOPIC, |i| {
            vec![(i % 251) as u8; RECORD_BYTES]
        });
    }
    // Every broker holds every partition, replicated: the followers' fetchers work.
    for b in &cluster.brokers {
        for t in &topics {
            wait_for(
                &format!("{} to replicate {t}", b.bootstrap()),
                CLUSTER_TIMEOUT,
                || {
                    let records: i64 = (0..PARTITIONS)
                        .map(|p| replica_log_end(&b.bootstrap(), t, p))
                        .sum();
                    (records == RECORDS_PER_TOPIC as i64).then_some(())
                },
            );
            assert_eq!(
                dirs_of(b.data_dir(), t).len(),
                PARTITIONS as usize,
                "{t} on {}",
                b.bootstrap()
            );
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = admin(&all);
    let opts = AdminOptions::new()
        .operation_timeout(Some(CLIENT_TIMEOUT))
        .request_timeout(Some(CLIENT_TIMEOUT));
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let churning = churn(all.clone(), topics.to_vec(), stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let results = rt
        .block_on(async {
            tokio::time::timeout(CLIENT_TIMEOUT * 2, admin.delete_topics(&names, &opts)).await
        })
        .expect("DeleteTopics answered")
        .expect("DeleteTopics request");
    stop.store(true, Ordering::Relaxed);
    churning.join().expect("churn producer");
    for r in &results {
        assert!(r.is_ok(), "delete: {r:?}");
    }

    // Each broker removes the deleted topics' directories (renamed ones included).
    for b in &cluster.brokers {
        wait_for(
            &format!("{} to remove the deleted topics' data", b.bootstrap()),
            DELETION_TIMEOUT,
            || {
                topics
                    .iter()
                    .all(|t| dirs_of(b.data_dir(), t).is_empty())
                    .then_some(())
            },
        );
    }

    // Deletion done: no shard spins.
    let pids: Vec<u32> = cluster.brokers.iter().map(|b| b.pid()).collect();
    let before: Vec<f64> = pids
        .iter()
        .map(|p| runnel::metrics::process_cpu_seconds(Some(*p)).expect("broker cpu"))
        .collect();
    let started = Instant::now();
    std::thread::sleep(CPU_WINDOW);
    let elapsed = started.elapsed().as_secs_f64();
    for (i, p) in pids.iter().enumerate() {
        let used = runnel::metrics::process_cpu_seconds(Some(*p)).expect("broker cpu") - before[i];
        assert!(
            used / elapsed < CPU_SHARE_MAX,
            "broker {} used {used:.2} s of CPU in {elapsed:.2} s after the deletion",
            i + 1
        );
    }

    // Every broker answers, and the cluster still creates, stores and serves topics.
    for b in &cluster.brokers {
        wait_for(
            &format!("{} to answer metadata", b.bootstrap()),
            CLUSTER_TIMEOUT,
            || answers_metadata(&b.bootstrap()).then_some(()),
        );
    }
    let fresh = topic_name("after-delete");
    create_replicated(&all, &fresh, 3, 3).expect("create a topic after the deletion");
    produce_all(&all, &fresh, 30, |i| format!("fresh-{i}").into_bytes());
    let c = consumer(&all, &[]);
    assign(&c, &fresh, &[0, 1, 2], rdkafka::Offset::Beginning);
    // At least all of them: a leader that just took over may expose its high watermark
    // a fetch round late.
    let mut got: Vec<String> = consume_at_least_to_end(&c, &[0, 1, 2], 30, CONSUME_TIMEOUT)
        .iter()
        .map(|m| String::from_utf8(m.payload().unwrap().to_vec()).unwrap())
        .collect();
    got.sort_by_key(|v| v[6..].parse::<usize>().unwrap());
    let want: Vec<String> = (0..30).map(|i| format!("fresh-{i}")).collect();
    assert_eq!(
        got, want,
        "the cluster serves a new topic after the deletion"
    );
    drop(c);

    // A clean stop: SIGTERM works on every broker (the last one has no quorum left and
    // must not wait for one).
    for id in 1..=3 {
        let started = Instant::now();
        cluster.node(id).sigterm();
        let status = cluster
            .node(id)
            .wait_exit(SIGTERM_EXIT_MAX)
            .unwrap_or_else(|| panic!("broker {id} exits on SIGTERM"));
        assert_eq!(status.code(), Some(0), "broker {id}: {status:?}");
        eprintln!("broker {id} stopped in {:?}", started.elapsed());
    }
}

/// Copies the regular files of `from` into a new directory `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn directories_of_no_hosted_partition_are_removed_at_start_and_hosted_data_stays() {
    let mut broker = Broker::start_with(BrokerOptions::default().auto_create_topics(false));
    let bootstrap = broker.bootstrap();
    let topic = topic_name("kept");
    create_topic_blocking(&bootstrap, &topic, 1);
    const N: usize = 200;
    produce_all(&bootstrap, &topic, N, |i| format!("kept-{i}").into_bytes());
    assert!(broker.terminate(SIGTERM_EXIT_MAX), "clean stop");

    // What a deletion interrupted by a crash leaves: a partition directory of a topic
    // the metadata no longer has, and one already renamed for deletion.
    let topics_dir = broker.data_dir().join("topics");
    let kept = topics_dir.join(format!("{topic}-0"));
    let gone = topics_dir.join("gone-0");
    let renamed = topics_dir.join("gone-1.00000000deadbeef.delete");
    copy_dir(&kept, &gone);
    copy_dir(&kept, &renamed);
    // A partition the topic does not have is no hosted partition either.
    let beyond = topics_dir.join(format!("{topic}-1"));
    copy_dir(&kept, &beyond);

    broker.restart();
    wait_for(
        "the stray directories to be removed",
        DELETION_TIMEOUT,
        || {
            let left: Vec<String> = std::fs::read_dir(&topics_dir)
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            (left == vec![format!("{topic}-0")]).then_some(())
        },
    );
    assert!(kept.is_dir(), "the hosted partition's directory stays");

    let c = consumer(&bootstrap, &[]);
    assign(&c, &topic, &[0], rdkafka::Offset::Beginning);
    let got: Vec<(i64, String)> = consume_to_end(&c, &[0], CONSUME_TIMEOUT)
        .iter()
        .map(|m| (m.offset(), payload_str(m)))
        .collect();
    let want: Vec<(i64, String)> = (0..N).map(|i| (i as i64, format!("kept-{i}"))).collect();
    assert_eq!(got, want, "the hosted partition's records, exactly");
    // Each removal is logged, with the bytes freed, once it is done.
    for name in [
        "gone-0",
        "gone-1.00000000deadbeef.delete",
        &format!("{topic}-1"),
    ] {
        wait_for(
            &format!("the removal of {name} logged"),
            CLIENT_TIMEOUT,
            || {
                broker
                    .log_tail(1 << 20)
                    .lines()
                    .any(|l| {
                        l.contains("deleted partition data")
                            && l.contains(name)
                            && l.contains("bytes=")
                    })
                    .then_some(())
            },
        );
    }
}
