//! Log compaction seen by real clients (rdkafka): a `cleanup.policy=compact` topic
//! keeps the last value per key, and a consumer reading while the broker compacts
//! never sees a key go back to an older value.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Offset;

const RECORDS: usize = 100_000;
const KEYS: usize = 1_000;

fn create_compacted(bootstrap: &str, topic: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin = admin(bootstrap);
        let t = NewTopic::new(topic, 1, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact")
            .set("segment.bytes", "131072")
            .set("min.cleanable.dirty.ratio", "0.01")
            .set("delete.retention.ms", "3600000");
        let opts = AdminOptions::new().operation_timeout(Some(CLIENT_TIMEOUT));
        let r = admin.create_topics([&t], &opts).await.unwrap();
        assert!(r[0].is_ok(), "{r:?}");
    });
}

/// Base offset of the active (newest) segment: records below it are compacted.
fn active_base(partition_dir: &Path) -> i64 {
    std::fs::read_dir(partition_dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")
                .and_then(|s| s.parse::<i64>().ok())
        })
        .max()
        .unwrap()
}

fn seq_of(value: &str) -> usize {
    value.rsplit('-').next().unwrap().parse().unwrap()
}

/// Reads the whole partition: (offset, key, value) in order.
fn read_all(bootstrap: &str, topic: &str) -> Vec<(i64, String, String)> {
    let c = consumer(bootstrap, &[]);
    assign(&c, topic, &[0], Offset::Beginning);
    consume_to_end(&c, &[0], CONSUME_TIMEOUT)
        .iter()
        .map(|m| {
            (
                m.offset(),
                String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                payload_str(m),
            )
        })
        .collect()
}

#[test]
fn a_compacted_topic_keeps_the_last_value_per_key_and_readers_never_go_back() {
    let broker = Broker::start_with(BrokerOptions {
        extra_args: vec!["--log-retention-check-interval-ms".into(), "100".into()],
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    let topic = topic_name("compact");
    create_compacted(&bootstrap, &topic);
    let partition_dir = broker.data_dir().join("topics").join(format!("{topic}-0"));

    // A reader that loops over the partition from the start while records are produced
    // and compacted: within one pass a key's sequence numbers only grow.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (bootstrap, topic, stop) = (bootstrap.clone(), topic.clone(), stop.clone());
        std::thread::spawn(move || {
            let c: BaseConsumer = consumer(&bootstrap, &[]);
            let deadline = Instant::now() + Duration::from_secs(90);
            let (mut passes, mut records) = (0, 0usize);
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                assign(&c, &topic, &[0], Offset::Beginning);
                let mut newest: HashMap<String, usize> = HashMap::new();
                let mut last_offset = -1;
                loop {
                    assert!(Instant::now() < deadline, "reader pass did not end");
                    match c.poll(Duration::from_millis(100)) {
                        None => {}
                        Some(Ok(m)) => {
                            assert!(m.offset() > last_offset, "offsets go forward");
                            last_offset = m.offset();
                            let k = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                            let v = std::str::from_utf8(m.payload().unwrap()).unwrap();
                            let seq = seq_of(v);
                            if let Some(prev) = newest.insert(k.clone(), seq) {
                                assert!(prev < seq, "{k}: value {prev} seen before older {seq}");
                            }
                            records += 1;
                        }
                        Some(Err(KafkaError::PartitionEOF(_))) => break,
                        Some(Err(e)) => panic!("reader: {e:?}"),
                    }
                }
                passes += 1;
            }
            (passes, records)
        })
    };

    let p: BaseProducer = {
        let mut c = base_config(&bootstrap);
        c.set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "30000")
            .set("queue.buffering.max.messages", "200000");
        c.create().unwrap()
    };
    let mut last: HashMap<String, String> = HashMap::new();
    for i in 0..RECORDS {
        let k = format!("key-{}", (i * 7919) % KEYS);
        let v = format!("{k}-value-{i}");
        loop {
            match p.send(BaseRecord::to(&topic).key(&k).payload(&v)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(_), _)) => {
                    p.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("produce: {e:?}"),
            }
        }
        last.insert(k, v);
    }
    p.flush(Duration::from_secs(30)).unwrap();

    // Compaction runs every 100 ms: wait until every key below the active segment is
    // unique, then check the survivors are exactly the last values.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (records, active) = loop {
        let active = active_base(&partition_dir);
        let records = read_all(&bootstrap, &topic);
        let mut below: HashMap<&str, usize> = HashMap::new();
        for (off, k, _) in &records {
            if *off < active {
                *below.entry(k.as_str()).or_default() += 1;
            }
        }
        if below.values().all(|n| *n == 1) && active > 0 {
            break (records, active);
        }
        assert!(
            Instant::now() < deadline,
            "not compacted within 60 s: {} records, {} keys repeated below {active}",
            records.len(),
            below.values().filter(|n| **n > 1).count()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, Ordering::Release);
    let (passes, read) = reader.join().unwrap();
    assert!(
        passes >= 1 && read > 0,
        "the reader ran ({passes} passes, {read} records)"
    );

    let mut final_value: HashMap<&str, &str> = HashMap::new();
    let mut prev = -1;
    for (off, k, v) in &records {
        assert!(*off > prev);
        prev = *off;
        final_value.insert(k, v);
    }
    assert_eq!(final_value.len(), KEYS);
    for (k, v) in &last {
        assert_eq!(final_value.get(k.as_str()), Some(&v.as_str()), "key {k}");
    }
    let tail = records.iter().filter(|r| r.0 >= active).count();
    assert!(
        records.len() - tail <= KEYS,
        "{} records below the active segment",
        records.len() - tail
    );
    assert!(
        records.len() < RECORDS / 5,
        "{} of {RECORDS} records remain",
        records.len()
    );
}
