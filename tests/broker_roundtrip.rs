//! Real-client round trips through `runnel serve` with librdkafka (the `rdkafka`
//! crate): acks 0/1/all, every compression codec, consume from beginning / end /
//! timestamp, keys and headers, 64 partitions over two shards, SIGKILL + restart
//! keeping every acknowledged record, and the idempotent producer.
//!
//! Every test starts its own broker (ephemeral port, temp dir) and every wait is
//! bounded (see `common::{CLIENT_TIMEOUT, CONSUME_TIMEOUT}`); counts are exact.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;
use kafka_protocol::records::Compression;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Enqueue `n` records made by `make` and wait (bounded) for every delivery
/// report. Returns (partition, offset) per record, in send order.
async fn produce_n<F>(p: &FutureProducer, topic: &str, n: usize, make: F) -> Vec<(i32, i64)>
where
    F: Fn(usize) -> (String, String),
{
    let mut futs = Vec::with_capacity(n);
    for i in 0..n {
        let (k, v) = make(i);
        let fut = p
            .send_result(FutureRecord::to(topic).key(&k).payload(&v))
            .map_err(|(e, _)| e)
            .expect("enqueue record");
        futs.push(fut);
    }
    let results = tokio::time::timeout(CLIENT_TIMEOUT, join_all(futs))
        .await
        .expect("delivery reports timed out");
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let d = r
                .expect("delivery future canceled")
                .unwrap_or_else(|(e, _)| panic!("record {i} not delivered: {e:?}"));
            (d.partition, d.offset)
        })
        .collect()
}

fn kv(prefix: &str) -> impl Fn(usize) -> (String, String) + '_ {
    move |i| (format!("key-{i}"), format!("{prefix}-{i}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_with_acks_0_1_and_all_then_consume_everything() {
    let broker = Broker::start();
    let n = 100usize;
    for acks in ["0", "1", "all"] {
        let topic = topic_name(&format!("acks{acks}"));
        create_topic(&broker.bootstrap(), &topic, 1).await;
        let p = producer(&broker.bootstrap(), &[("acks", acks)]);
        let prefix = format!("acks{acks}");
        let delivered = produce_n(&p, &topic, n, kv(&prefix)).await;
        if acks != "0" {
            // acks=1/all: the broker answered with the assigned offsets.
            let offsets: Vec<i64> = delivered.iter().map(|&(_, o)| o).collect();
            let mut sorted = offsets.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..n as i64).collect::<Vec<_>>(),
                "acks={acks}: delivery offsets"
            );
            assert!(delivered.iter().all(|&(p, _)| p == 0));
        }
        let c = consumer(&broker.bootstrap(), &[]);
        assign(&c, &topic, &[0], Offset::Beginning);
        // acks=0 has no response to wait for, so read the exact count first,
        // then to the end to prove there is nothing extra.
        let msgs = consume_at_least_to_end(&c, &[0], n, CONSUME_TIMEOUT);
        assert_eq!(msgs.len(), n, "acks={acks}: consumed count");
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.offset(), i as i64, "acks={acks}: offset of record {i}");
            assert_eq!(
                payload_str(m),
                format!("{prefix}-{i}"),
                "acks={acks}: value of record {i}"
            );
            assert_eq!(
                m.key(),
                Some(format!("key-{i}").as_bytes()),
                "acks={acks}: key of record {i}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_round_trips() {
    let broker = Broker::start();
    let n = 300usize;
    let codecs = [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ];
    for (codec, expected) in codecs {
        let topic = topic_name(&format!("codec-{codec}"));
        create_topic(&broker.bootstrap(), &topic, 1).await;
        let p = producer(
            &broker.bootstrap(),
            &[
                ("acks", "all"),
                ("compression.type", codec),
                ("linger.ms", "20"),
            ],
        );
        // Compressible, but every record distinct.
        let make = |i: usize| {
            (
                format!("key-{i}"),
                format!("{codec}-{i}-{}", "abcdefgh".repeat(24)),
            )
        };
        let delivered = produce_n(&p, &topic, n, make).await;
        let mut offsets: Vec<i64> = delivered.iter().map(|&(_, o)| o).collect();
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            (0..n as i64).collect::<Vec<_>>(),
            "{codec}: delivery offsets"
        );

        let c = consumer(&broker.bootstrap(), &[]);
        assign(&c, &topic, &[0], Offset::Beginning);
        let msgs = consume_to_end(&c, &[0], CONSUME_TIMEOUT);
        assert_eq!(msgs.len(), n, "{codec}: consumed count");
        for (i, m) in msgs.iter().enumerate() {
            let (k, v) = make(i);
            assert_eq!(m.offset(), i as i64, "{codec}: offset");
            assert_eq!(payload_str(m), v, "{codec}: value of record {i}");
            assert_eq!(m.key(), Some(k.as_bytes()), "{codec}: key of record {i}");
        }

        let stored = stored_batch_codecs(&broker.bootstrap(), &topic);
        assert!(!stored.is_empty(), "{codec}: no batches fetched");
        assert!(
            stored.iter().all(|&c| c == expected),
            "{codec}: broker must store batches as sent (compression {expected:?}), fetched {stored:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_from_beginning_end_and_timestamp() {
    let broker = Broker::start();
    let topic = topic_name("positions");
    create_topic(&broker.bootstrap(), &topic, 1).await;
    let p = producer(&broker.bootstrap(), &[("acks", "all")]);
    let ts_base: i64 = 1_700_000_000_000;
    let first = 20i64;
    for i in 0..first {
        let v = format!("old-{i}");
        let d = tokio::time::timeout(
            CLIENT_TIMEOUT,
            p.send(
                FutureRecord::to(&topic)
                    .key("k")
                    .payload(&v)
                    .timestamp(ts_base + i * 1000),
                Duration::ZERO,
            ),
        )
        .await
        .expect("send timed out")
        .unwrap_or_else(|(e, _)| panic!("send {i}: {e:?}"));
        assert_eq!(d.offset, i, "delivery offset");
    }

    // From the beginning: all 20 in order with their CreateTime timestamps.
    let c = consumer(&broker.bootstrap(), &[]);
    assign(&c, &topic, &[0], Offset::Beginning);
    let msgs = consume_to_end(&c, &[0], CONSUME_TIMEOUT);
    assert_eq!(msgs.len(), first as usize);
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.offset(), i as i64);
        assert_eq!(payload_str(m), format!("old-{i}"));
        assert_eq!(
            m.timestamp(),
            Timestamp::CreateTime(ts_base + i as i64 * 1000),
            "timestamp of record {i}"
        );
    }

    // From the end: nothing until new records arrive, then exactly those.
    let tail = consumer(&broker.bootstrap(), &[]);
    assign(&tail, &topic, &[0], Offset::End);
    wait_eof_no_messages(&tail, &[0], CONSUME_TIMEOUT);
    for i in 0..5i64 {
        let v = format!("new-{i}");
        tokio::time::timeout(
            CLIENT_TIMEOUT,
            p.send(
                FutureRecord::<str, str>::to(&topic)
                    .payload(&v)
                    .timestamp(ts_base + 100_000 + i * 1000),
                Duration::ZERO,
            ),
        )
        .await
        .expect("send timed out")
        .unwrap_or_else(|(e, _)| panic!("send new {i}: {e:?}"));
    }
    let new_msgs = consume_at_least_to_end(&tail, &[0], 5, CONSUME_TIMEOUT);
    let got: Vec<(i64, String)> = new_msgs
        .iter()
        .map(|m| (m.offset(), payload_str(m)))
        .collect();
    let want: Vec<(i64, String)> = (0..5).map(|i| (first + i, format!("new-{i}"))).collect();
    assert_eq!(
        got, want,
        "consumer assigned at the end sees exactly the new records"
    );

    // By timestamp (ListOffsets): exact hit, between two records, and past the end.
    let lookup = |ts: i64| -> Offset {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(ts))
            .unwrap();
        let res = c
            .offsets_for_times(tpl, CLIENT_TIMEOUT)
            .expect("offsets_for_times");
        let e = res.find_partition(&topic, 0).expect("partition in result");
        assert!(
            e.error().is_ok(),
            "offsets_for_times partition error: {:?}",
            e.error()
        );
        e.offset()
    };
    assert_eq!(
        lookup(ts_base + 7_000),
        Offset::Offset(7),
        "timestamp of record 7 -> offset 7"
    );
    assert_eq!(
        lookup(ts_base + 7_500),
        Offset::Offset(8),
        "between 7 and 8 -> first at or after: 8"
    );
    assert_eq!(
        lookup(ts_base - 1),
        Offset::Offset(0),
        "before everything -> offset 0"
    );
    assert_eq!(
        lookup(ts_base + 100_000),
        Offset::Offset(first),
        "first new record"
    );
    assert_eq!(
        lookup(ts_base + 10_000_000),
        Offset::End,
        "past the last timestamp -> no offset (-1)"
    );

    let by_ts = consumer(&broker.bootstrap(), &[]);
    assign(&by_ts, &topic, &[0], lookup(ts_base + 7_000));
    let msgs = consume_to_end(&by_ts, &[0], CONSUME_TIMEOUT);
    assert_eq!(
        msgs.len(),
        (first - 7 + 5) as usize,
        "records from the timestamp lookup on"
    );
    assert_eq!(msgs[0].offset(), 7);
    assert_eq!(payload_str(&msgs[0]), "old-7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_headers_and_null_values_round_trip() {
    let broker = Broker::start();
    let topic = topic_name("headers");
    create_topic(&broker.bootstrap(), &topic, 1).await;
    let p = producer(&broker.bootstrap(), &[("acks", "all")]);

    let binary: Vec<u8> = (0..=255u8).collect();
    struct Rec {
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(String, Option<Vec<u8>>)>,
    }
    let recs = vec![
        Rec {
            key: Some(b"plain".to_vec()),
            value: Some(b"v0".to_vec()),
            headers: vec![],
        },
        Rec {
            key: Some(binary.clone()),
            value: Some(binary.clone()),
            headers: vec![
                ("h1".into(), Some(b"one".to_vec())),
                ("h1".into(), Some(b"duplicate name".to_vec())),
                ("empty".into(), Some(vec![])),
                ("null".into(), None),
                ("bin".into(), Some(binary.clone())),
            ],
        },
        Rec {
            key: None,
            value: Some(b"no key".to_vec()),
            headers: vec![("only".into(), Some(b"header".to_vec()))],
        },
        Rec {
            key: Some(b"tombstone".to_vec()),
            value: None,
            headers: vec![],
        },
        Rec {
            key: Some(vec![]),
            value: Some(vec![]),
            headers: vec![("ünïcödé".into(), Some("välue".as_bytes().to_vec()))],
        },
    ];
    for (i, r) in recs.iter().enumerate() {
        let mut h = OwnedHeaders::new();
        for (name, value) in &r.headers {
            h = h.insert(Header {
                key: name,
                value: value.as_deref(),
            });
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(h);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        let d = tokio::time::timeout(CLIENT_TIMEOUT, p.send(rec, Duration::ZERO))
            .await
            .expect("send timed out")
            .unwrap_or_else(|(e, _)| panic!("send {i}: {e:?}"));
        assert_eq!(d.offset, i as i64);
    }

    let c = consumer(&broker.bootstrap(), &[]);
    assign(&c, &topic, &[0], Offset::Beginning);
    let msgs = consume_to_end(&c, &[0], CONSUME_TIMEOUT);
    assert_eq!(msgs.len(), recs.len());
    for (i, (m, r)) in msgs.iter().zip(&recs).enumerate() {
        assert_eq!(m.key(), r.key.as_deref(), "key of record {i}");
        assert_eq!(m.payload(), r.value.as_deref(), "value of record {i}");
        let got: Vec<(String, Option<Vec<u8>>)> = match m.headers() {
            Some(h) => h
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec())))
                .collect(),
            None => vec![],
        };
        assert_eq!(
            got, r.headers,
            "headers of record {i} (order, duplicates, empty and null values kept)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_partitions_over_two_shards_all_produce_and_consume() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let topic = topic_name("p64");
    let partitions = 64i32;
    let per_partition = 10usize;
    create_topic(&broker.bootstrap(), &topic, partitions).await;

    let c = consumer(&broker.bootstrap(), &[]);
    let md = c
        .fetch_metadata(Some(&topic), CLIENT_TIMEOUT)
        .expect("metadata");
    let broker_ids: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
    assert_eq!(broker_ids.len(), 1, "single-node cluster");
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("topic in metadata");
    assert!(t.error().is_none(), "topic metadata error: {:?}", t.error());
    assert_eq!(t.partitions().len(), partitions as usize);
    for part in t.partitions() {
        assert_eq!(
            part.leader(),
            broker_ids[0],
            "leader of partition {}",
            part.id()
        );
        assert!(
            part.error().is_none(),
            "partition {} error {:?}",
            part.id(),
            part.error()
        );
    }

    let p = producer(&broker.bootstrap(), &[("acks", "all")]);
    let mut futs = Vec::new();
    for i in 0..per_partition {
        for part in 0..partitions {
            let v = format!("p{part}-{i}");
            let fut = p
                .send_result(
                    FutureRecord::<str, str>::to(&topic)
                        .partition(part)
                        .payload(&v),
                )
                .map_err(|(e, _)| e)
                .expect("enqueue");
            futs.push((part, v, fut));
        }
    }
    let (meta, futs): (Vec<_>, Vec<_>) = futs.into_iter().map(|(p, v, f)| ((p, v), f)).unzip();
    let results = tokio::time::timeout(CLIENT_TIMEOUT, join_all(futs))
        .await
        .expect("deliveries timed out");
    let mut acked: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for ((part, v), r) in meta.into_iter().zip(results) {
        let d = r
            .unwrap()
            .unwrap_or_else(|(e, _)| panic!("{v} not delivered: {e:?}"));
        assert_eq!(d.partition, part);
        assert!(
            acked.insert((part, d.offset), v).is_none(),
            "offset {} given twice in partition {part}",
            d.offset
        );
    }

    let all: Vec<i32> = (0..partitions).collect();
    assign(&c, &topic, &all, Offset::Beginning);
    let msgs = consume_to_end(&c, &all, CONSUME_TIMEOUT);
    assert_eq!(
        msgs.len(),
        partitions as usize * per_partition,
        "consumed count over 64 partitions"
    );
    let mut by_part: HashMap<i32, Vec<(i64, String)>> = HashMap::new();
    for m in &msgs {
        by_part
            .entry(m.partition())
            .or_default()
            .push((m.offset(), payload_str(m)));
    }
    for part in 0..partitions {
        let got = by_part.remove(&part).unwrap_or_default();
        let want: Vec<(i64, String)> = (0..per_partition)
            .map(|i| (i as i64, format!("p{part}-{i}")))
            .collect();
        assert_eq!(got, want, "partition {part}");
        for (o, v) in &want {
            assert_eq!(
                acked.get(&(part, *o)),
                Some(v),
                "ack for partition {part} offset {o}"
            );
        }
    }
}

/// Produce `total` records in the background while `kill_after` of them get
/// acknowledged, SIGKILL the broker, restart it on the same data dir, and wait
/// for every delivery report. Returns (value -> (partition, offset)) for every
/// record that was acknowledged, and the number of failed deliveries.
async fn produce_across_a_crash(
    broker: &mut Broker,
    topic: &str,
    extra: &[(&str, &str)],
    total: usize,
    kill_after: usize,
) -> (HashMap<String, (i32, i64)>, usize) {
    let mut cfg = vec![
        ("acks", "all"),
        ("message.timeout.ms", "30000"),
        ("retry.backoff.ms", "100"),
    ];
    cfg.extend_from_slice(extra);
    let p = producer(&broker.bootstrap(), &cfg);
    let acked_count = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        let v = format!("rec-{i}");
        let k = format!("key-{}", i % 7);
        let fut = p
            .send_result(FutureRecord::to(topic).key(&k).payload(&v))
            .map_err(|(e, _)| e)
            .expect("enqueue");
        let counter = acked_count.clone();
        handles.push(tokio::spawn(async move {
            let r = fut.await.expect("delivery canceled");
            if r.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            (v, r.map(|d| (d.partition, d.offset)).map_err(|(e, _)| e))
        }));
        // Pace the producer (~1.5 s for 3000 records) so the kill lands
        // mid-stream with records in flight, not after everything is acked.
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if acked_count.load(Ordering::SeqCst) >= kill_after && broker.is_running() {
            broker.kill();
        }
    }
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while broker.is_running() && acked_count.load(Ordering::SeqCst) < kill_after {
        assert!(
            Instant::now() < deadline,
            "only {} acks before the kill point",
            acked_count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.kill();
    let acked_at_kill = acked_count.load(Ordering::SeqCst);
    eprintln!("SIGKILL with {acked_at_kill} of {total} records acknowledged");
    assert!(
        acked_at_kill < total,
        "all {total} records were acked before the kill; the test did not test anything"
    );
    broker.restart();

    let results = tokio::time::timeout(Duration::from_secs(60), join_all(handles))
        .await
        .expect("delivery reports after restart timed out");
    let mut acked = HashMap::new();
    let mut failed = 0;
    for r in results {
        let (v, r) = r.expect("delivery task panicked");
        match r {
            Ok(po) => {
                acked.insert(v, po);
            }
            Err(_) => failed += 1,
        }
    }
    assert!(acked.len() >= acked_at_kill, "acks went backwards?");
    (acked, failed)
}

/// Read the whole topic back: (partition, offset) -> value. Asserts offsets are
/// dense from 0 in each partition.
fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<(i32, i64), String> {
    let c = consumer(bootstrap, &[]);
    let all: Vec<i32> = (0..partitions).collect();
    assign(&c, topic, &all, Offset::Beginning);
    let msgs = consume_to_end(&c, &all, CONSUME_TIMEOUT);
    let mut out = BTreeMap::new();
    let mut next: HashMap<i32, i64> = HashMap::new();
    for m in &msgs {
        let n = next.entry(m.partition()).or_insert(0);
        assert_eq!(
            m.offset(),
            *n,
            "offsets in partition {} are not dense after recovery",
            m.partition()
        );
        *n += 1;
        out.insert((m.partition(), m.offset()), payload_str(m));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_keeps_every_acknowledged_record() {
    let mut broker = Broker::start_with(BrokerOptions::default().cores(2));
    let topic = topic_name("crash");
    let partitions = 2;
    create_topic(&broker.bootstrap(), &topic, partitions).await;

    let (acked, failed) = produce_across_a_crash(
        &mut broker,
        &topic,
        &[("enable.idempotence", "false")],
        3000,
        800,
    )
    .await;
    eprintln!("acked {} records, {failed} failed", acked.len());

    let stored = read_all(&broker.bootstrap(), &topic, partitions);
    let unique: std::collections::HashSet<&String> = stored.values().collect();
    eprintln!(
        "stored {} records, {} distinct (non-idempotent retries may duplicate)",
        stored.len(),
        unique.len()
    );
    let mut missing = Vec::new();
    for (v, po) in &acked {
        match stored.get(po) {
            Some(s) if s == v => {}
            other => missing.push(format!("{v} acked at {po:?}, stored there: {other:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged records lost or moved after SIGKILL, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let produced: std::collections::HashSet<String> =
        (0..3000).map(|i| format!("rec-{i}")).collect();
    assert!(
        stored.values().all(|v| produced.contains(v)),
        "a stored value that was never produced"
    );

    // Appends continue after the recovered end: no offset is reused.
    let ends: HashMap<i32, i64> = (0..partitions)
        .map(|p| (p, stored.keys().filter(|(q, _)| *q == p).count() as i64))
        .collect();
    let p = producer(&broker.bootstrap(), &[("acks", "all")]);
    for part in 0..partitions {
        let d = tokio::time::timeout(
            CLIENT_TIMEOUT,
            p.send(
                FutureRecord::<str, str>::to(&topic)
                    .partition(part)
                    .payload("after-restart"),
                Duration::ZERO,
            ),
        )
        .await
        .expect("send timed out")
        .unwrap_or_else(|(e, _)| panic!("produce after restart: {e:?}"));
        assert_eq!(
            d.offset, ends[&part],
            "first offset after recovery in partition {part}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_writes_each_record_once_in_order() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let topic = topic_name("idem");
    let partitions = 2;
    create_topic(&broker.bootstrap(), &topic, partitions).await;
    let p = producer(
        &broker.bootstrap(),
        &[
            ("enable.idempotence", "true"),
            ("max.in.flight.requests.per.connection", "5"),
            ("linger.ms", "1"),
        ],
    );
    let n = 2000usize;
    let delivered = produce_n(&p, &topic, n, |i| {
        (format!("key-{}", i % 7), format!("idem-{i}"))
    })
    .await;

    let stored = read_all(&broker.bootstrap(), &topic, partitions);
    assert_eq!(stored.len(), n, "idempotent producer: stored record count");
    for (i, (part, off)) in delivered.iter().enumerate() {
        assert_eq!(
            stored.get(&(*part, *off)),
            Some(&format!("idem-{i}")),
            "record {i} at its acked offset"
        );
    }
    // Per-partition order is the send order.
    for part in 0..partitions {
        let seq: Vec<usize> = stored
            .iter()
            .filter(|((q, _), _)| *q == part)
            .map(|(_, v)| v.trim_start_matches("idem-").parse().unwrap())
            .collect();
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "partition {part} out of send order"
        );
    }
}

/// The retries librdkafka makes when the broker dies mid-request carry the
/// same producer id and sequence numbers; the broker must not store them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_retries_across_a_restart_do_not_duplicate() {
    let mut broker = Broker::start_with(BrokerOptions::default().cores(2));
    let topic = topic_name("idem-crash");
    let partitions = 2;
    create_topic(&broker.bootstrap(), &topic, partitions).await;

    let (acked, failed) = produce_across_a_crash(
        &mut broker,
        &topic,
        &[("enable.idempotence", "true")],
        3000,
        800,
    )
    .await;
    eprintln!("acked {} records, {failed} failed", acked.len());

    let stored = read_all(&broker.bootstrap(), &topic, partitions);
    let mut seen: HashMap<&str, (i32, i64)> = HashMap::new();
    for (po, v) in &stored {
        if let Some(prev) = seen.insert(v.as_str(), *po) {
            panic!("{v} stored twice: at {prev:?} and {po:?} (idempotent retry duplicated)");
        }
    }
    for (v, po) in &acked {
        assert_eq!(
            stored.get(po),
            Some(v),
            "acknowledged record {v} not at its acked offset {po:?}"
        );
    }
}

/// Records close to the 1 MiB default message.max.bytes go through produce and
/// fetch intact (fetch sizing, batch boundaries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_round_trip() {
    let broker = Broker::start();
    let topic = topic_name("large");
    create_topic(&broker.bootstrap(), &topic, 1).await;
    let p = producer(&broker.bootstrap(), &[("acks", "all"), ("linger.ms", "0")]);
    let n = 6usize;
    let value = |i: usize| -> Vec<u8> {
        (0..900 * 1024)
            .map(|j| ((i * 31 + j * 7) % 251) as u8)
            .collect()
    };
    for i in 0..n {
        let v = value(i);
        let d = tokio::time::timeout(
            CLIENT_TIMEOUT,
            p.send(
                FutureRecord::<str, [u8]>::to(&topic).payload(&v[..]),
                Duration::ZERO,
            ),
        )
        .await
        .expect("send timed out")
        .unwrap_or_else(|(e, _)| panic!("large record {i}: {e:?}"));
        assert_eq!(d.offset, i as i64);
    }
    let c = consumer(&broker.bootstrap(), &[]);
    assign(&c, &topic, &[0], Offset::Beginning);
    let msgs = consume_to_end(&c, &[0], CONSUME_TIMEOUT);
    assert_eq!(msgs.len(), n);
    for (i, m) in msgs.iter().enumerate() {
        assert!(
            m.payload() == Some(&value(i)[..]),
            "large record {i} differs after the round trip"
        );
    }
}

/// A consumer starting in the middle of a compressed batch gets exactly the
/// records from its offset on (the broker returns whole batches; the client
/// skips the head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_from_an_offset_inside_a_compressed_batch() {
    let broker = Broker::start();
    let topic = topic_name("mid-batch");
    create_topic(&broker.bootstrap(), &topic, 1).await;
    let p = producer(
        &broker.bootstrap(),
        &[
            ("acks", "all"),
            ("compression.type", "zstd"),
            ("linger.ms", "50"),
        ],
    );
    let n = 100usize;
    produce_n(&p, &topic, n, kv("mid")).await;
    let stored = stored_batch_codecs(&broker.bootstrap(), &topic);
    assert!(
        stored.len() < n,
        "expected records to share batches, got {} batches",
        stored.len()
    );

    let c = consumer(&broker.bootstrap(), &[]);
    assign(&c, &topic, &[0], Offset::Offset(37));
    let msgs = consume_to_end(&c, &[0], CONSUME_TIMEOUT);
    let got: Vec<(i64, String)> = msgs.iter().map(|m| (m.offset(), payload_str(m))).collect();
    let want: Vec<(i64, String)> = (37..n).map(|i| (i as i64, format!("mid-{i}"))).collect();
    assert_eq!(got, want);
}

/// message.timestamp.type=LogAppendTime: the broker stamps the batch, and
/// consumers see LogAppendTime timestamps taken at append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_append_time_topics_are_stamped_by_the_broker() {
    let broker = Broker::start();
    let topic = topic_name("lat");
    let admin = admin(&broker.bootstrap());
    let opts = rdkafka::admin::AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let nt = rdkafka::admin::NewTopic::new(&topic, 1, rdkafka::admin::TopicReplication::Fixed(1))
        .set("message.timestamp.type", "LogAppendTime");
    let res = tokio::time::timeout(CLIENT_TIMEOUT, admin.create_topics([&nt], &opts))
        .await
        .unwrap()
        .unwrap();
    assert!(res[0].is_ok(), "{:?}", res[0]);

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let p = producer(&broker.bootstrap(), &[("acks", "all")]);
    for i in 0..5 {
        let v = format!("lat-{i}");
        // An old CreateTime the broker must replace.
        tokio::time::timeout(
            CLIENT_TIMEOUT,
            p.send(
                FutureRecord::<str, str>::to(&topic)
                    .payload(&v)
                    .timestamp(1_000),
                Duration::ZERO,
            ),
        )
        .await
        .unwrap()
        .unwrap_or_else(|(e, _)| panic!("{e:?}"));
    }
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let c = consumer(&broker.bootstrap(), &[]);
    assign(&c, &topic, &[0], Offset::Beginning);
    let msgs = consume_to_end(&c, &[0], CONSUME_TIMEOUT);
    assert_eq!(msgs.len(), 5);
    for m in &msgs {
        match m.timestamp() {
            Timestamp::LogAppendTime(t) => {
                assert!(
                    t >= before - 1000 && t <= after + 1000,
                    "log append time {t} outside [{before}, {after}]"
                )
            }
            other => panic!("expected LogAppendTime, got {other:?}"),
        }
    }
}

/// Four producers write concurrently over two shards while a consumer tails
/// the topic from the beginning: the consumer sees every record exactly once,
/// each producer's records in send order per partition, and the offsets it
/// reads match the acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_and_a_tailing_consumer_agree() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let topic = topic_name("tail");
    let partitions = 8i32;
    create_topic(&broker.bootstrap(), &topic, partitions).await;
    let producers = 4usize;
    let per_producer = 2000usize;
    let total = producers * per_producer;

    // The consumer starts first and follows the log as it grows.
    let bootstrap = broker.bootstrap();
    let t = topic.clone();
    let tail = std::thread::spawn(move || {
        let c = consumer(&bootstrap, &[]);
        let all: Vec<i32> = (0..partitions).collect();
        assign(&c, &t, &all, Offset::Beginning);
        let msgs = consume_at_least_to_end(&c, &all, total, Duration::from_secs(60));
        assert_eq!(
            msgs.len(),
            total,
            "records consumed by the tailing consumer"
        );
        msgs.into_iter()
            .map(|m| (m.partition(), m.offset(), payload_str(&m)))
            .collect::<Vec<_>>()
    });

    let mut tasks = Vec::new();
    for w in 0..producers {
        let p = producer(
            &broker.bootstrap(),
            &[("acks", "all"), ("enable.idempotence", "true")],
        );
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let acks = produce_n(&p, &topic, per_producer, |i| {
                (format!("w{w}-k{}", i % 16), format!("w{w}-{i}"))
            })
            .await;
            (w, acks)
        }));
    }
    let mut acked: HashMap<(i32, i64), String> = HashMap::new();
    for t in tasks {
        let (w, acks) = t.await.unwrap();
        for (i, po) in acks.into_iter().enumerate() {
            assert!(
                acked.insert(po, format!("w{w}-{i}")).is_none(),
                "offset {po:?} acked twice"
            );
        }
    }
    let seen = tail.join().expect("tailing consumer panicked");
    assert_eq!(seen.len(), total);
    let mut last_index: HashMap<(i32, usize), usize> = HashMap::new();
    for (p, o, v) in &seen {
        assert_eq!(
            acked.get(&(*p, *o)),
            Some(v),
            "consumed {v} at ({p}, {o}) but that offset was acked for another record"
        );
        let (w, i) = v.trim_start_matches('w').split_once('-').unwrap();
        let (w, i): (usize, usize) = (w.parse().unwrap(), i.parse().unwrap());
        if let Some(prev) = last_index.insert((*p, w), i) {
            assert!(
                prev < i,
                "producer {w} out of order in partition {p}: {prev} then {i}"
            );
        }
    }
    let distinct: std::collections::HashSet<&String> = seen.iter().map(|(_, _, v)| v).collect();
    assert_eq!(distinct.len(), total, "a record was consumed twice");
}
