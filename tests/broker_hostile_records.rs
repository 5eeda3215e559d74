//! Records that lie inside a batch whose CRC is right, produced over the wire to the
//! real binary: each is refused with Kafka's error code (INVALID_RECORD 87 for records
//! that lie or break a rule, CORRUPT_MESSAGE 2 for bytes that cannot be read at all, as
//! Kafka's `LogValidator` answers), nothing of it is stored, and a real client
//! (rdkafka) then reads the topic to its end: every record produced before and after,
//! none missing, no consumer stuck at the lying batch's offset.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Offset;
use runnel::segment::batch::{compute_crc, BatchHeader, BATCH_HEADER_LEN};
use runnel::segment::compact::{build_batch, Codec};
use runnel::segment::testing::put_varint;

const CORRUPT_MESSAGE: i16 = 2;
const INVALID_RECORD: i16 = 87;
/// Good records produced before and after each lying batch.
const GOOD_EACH_SIDE: usize = 3;

/// How a hand-built record lies.
#[derive(Clone, Copy, Default)]
struct Lie {
    /// Added to the record's true length prefix.
    record_len: i64,
    /// Added to the key's true length.
    key_len: i64,
    /// The header count written (no header bytes follow).
    headers: i64,
    offset_delta: i64,
}

/// One framed record: `key` (None: null) and `value`, lying as `lie` says.
fn record(key: Option<&[u8]>, value: &[u8], lie: Lie) -> Vec<u8> {
    let mut rec = vec![0u8]; // attributes
    put_varint(&mut rec, 0); // timestamp delta
    put_varint(&mut rec, lie.offset_delta);
    match key {
        Some(k) => {
            put_varint(&mut rec, k.len() as i64 + lie.key_len);
            rec.extend_from_slice(k);
        }
        None => put_varint(&mut rec, -1),
    }
    put_varint(&mut rec, value.len() as i64);
    rec.extend_from_slice(value);
    put_varint(&mut rec, lie.headers);
    let mut out = Vec::new();
    put_varint(&mut out, rec.len() as i64 + lie.record_len);
    out.extend_from_slice(&rec);
    out
}

/// A v2 batch of the framed `records` (`count` claimed), compressed with `codec`, with a
/// correct CRC: only the records lie.
fn batch(records: &[u8], count: i32, codec: Codec) -> Bytes {
    let now = 1_700_000_000_000;
    let template = BatchHeader {
        base_offset: 0,
        batch_length: 0,
        partition_leader_epoch: -1,
        magic: 2,
        crc: 0,
        attributes: 0,
        last_offset_delta: count - 1,
        base_timestamp: now,
        max_timestamp: now,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records_count: count,
    };
    Bytes::from(build_batch(&template, codec, 0, count - 1, records, count, None).unwrap())
}

/// `b` with its attributes set to `attributes` and the CRC made right again.
fn with_attributes(b: &Bytes, attributes: i16) -> Bytes {
    let mut v = b.to_vec();
    v[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = compute_crc(&v[..BATCH_HEADER_LEN], &v[BATCH_HEADER_LEN..]);
    v[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(v)
}

fn create(bootstrap: &str, topic: &str, compacted: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin = admin(bootstrap);
        let mut t = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
        if compacted {
            t = t.set("cleanup.policy", "compact");
        }
        let opts = AdminOptions::new().operation_timeout(Some(CLIENT_TIMEOUT));
        let r = admin.create_topics([&t], &opts).await.unwrap();
        assert!(r[0].is_ok(), "{r:?}");
    });
}

/// Produces `values` with keys through rdkafka and waits for every delivery.
fn produce_good(bootstrap: &str, topic: &str, values: &[String]) {
    let p: BaseProducer = base_config(bootstrap)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "15000")
        .create()
        .unwrap();
    for v in values {
        loop {
            match p.send(BaseRecord::to(topic).key(v).payload(v)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(_), _)) => {
                    p.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("produce: {e:?}"),
            }
        }
    }
    p.flush(CLIENT_TIMEOUT).expect("deliver the good records");
}

/// The whole check for one lying batch: good records, the lie refused with `code`,
/// good records, and a consumer that reads exactly the good ones to the end.
fn lie_is_refused_and_readers_pass(what: &str, lying: Bytes, code: i16, compacted: bool) {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("lie");
    create(&bootstrap, &topic, compacted);
    let before: Vec<String> = (0..GOOD_EACH_SIDE).map(|i| format!("before-{i}")).collect();
    let after: Vec<String> = (0..GOOD_EACH_SIDE).map(|i| format!("after-{i}")).collect();
    produce_good(&bootstrap, &topic, &before);
    assert_eq!(
        raw_produce_records(&bootstrap, &topic, 0, lying),
        code,
        "{what}: the lying batch's error code"
    );
    produce_good(&bootstrap, &topic, &after);

    let c = consumer(&bootstrap, &[]);
    assign(&c, &topic, &[0], Offset::Beginning);
    let got: Vec<(i64, String)> = consume_to_end(&c, &[0], CONSUME_TIMEOUT)
        .iter()
        .map(|m| (m.offset(), payload_str(m)))
        .collect();
    let want: Vec<(i64, String)> = before
        .iter()
        .chain(&after)
        .enumerate()
        .map(|(i, v)| (i as i64, v.clone()))
        .collect();
    assert_eq!(got, want, "{what}: what a consumer reads");
}

fn good_record() -> Vec<u8> {
    record(Some(b"k"), b"value", Lie::default())
}

#[test]
fn a_record_length_past_the_batch_is_invalid_record() {
    let lie = Lie {
        record_len: 100,
        ..Lie::default()
    };
    let raw = record(Some(b"k"), b"value", lie);
    lie_is_refused_and_readers_pass(
        "record length",
        batch(&raw, 1, Codec::None),
        INVALID_RECORD,
        false,
    );
}

#[test]
fn a_key_length_past_the_record_is_invalid_record() {
    let lie = Lie {
        key_len: 40,
        ..Lie::default()
    };
    let raw = [good_record(), record(Some(b"k"), b"value", lie)].concat();
    lie_is_refused_and_readers_pass(
        "key length",
        batch(&raw, 2, Codec::None),
        INVALID_RECORD,
        false,
    );
}

#[test]
fn two_to_the_30_headers_are_invalid_record() {
    let lie = Lie {
        headers: 1 << 30,
        ..Lie::default()
    };
    let raw = record(Some(b"k"), b"value", lie);
    lie_is_refused_and_readers_pass(
        "2^30 headers",
        batch(&raw, 1, Codec::None),
        INVALID_RECORD,
        false,
    );
}

#[test]
fn a_record_count_the_bytes_do_not_hold_is_invalid_record() {
    let raw = good_record();
    lie_is_refused_and_readers_pass(
        "records_count 5 over one record",
        batch(&raw, 5, Codec::None),
        INVALID_RECORD,
        false,
    );
}

#[test]
fn offset_deltas_that_are_not_0_1_2_are_invalid_record() {
    let lie = Lie {
        offset_delta: 7,
        ..Lie::default()
    };
    let raw = [good_record(), record(Some(b"k"), b"v", lie)].concat();
    lie_is_refused_and_readers_pass(
        "offset delta 7 at index 1",
        batch(&raw, 2, Codec::None),
        INVALID_RECORD,
        false,
    );
}

#[test]
fn unknown_codecs_5_6_7_are_corrupt_message() {
    let good = batch(&good_record(), 1, Codec::None);
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("codec");
    create(&bootstrap, &topic, false);
    produce_good(&bootstrap, &topic, &["before".to_string()]);
    for codec in 5..=7 {
        assert_eq!(
            raw_produce_records(&bootstrap, &topic, 0, with_attributes(&good, codec)),
            CORRUPT_MESSAGE,
            "codec {codec}"
        );
    }
    produce_good(&bootstrap, &topic, &["after".to_string()]);
    let c = consumer(&bootstrap, &[]);
    assign(&c, &topic, &[0], Offset::Beginning);
    let got: Vec<String> = consume_to_end(&c, &[0], CONSUME_TIMEOUT)
        .iter()
        .map(payload_str)
        .collect();
    assert_eq!(got, ["before", "after"]);
}

#[test]
fn compressed_batches_whose_records_lie_are_invalid_record_for_every_codec() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("lie-compressed");
    create(&bootstrap, &topic, false);
    let lies = [
        Lie {
            record_len: 100,
            ..Lie::default()
        },
        Lie {
            key_len: 40,
            ..Lie::default()
        },
        Lie {
            headers: 1 << 30,
            ..Lie::default()
        },
    ];
    let second = Lie {
        offset_delta: 1,
        ..Lie::default()
    };
    let mut expected: Vec<String> = Vec::new();
    for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        // A valid batch of the codec is stored: the check does not refuse them all.
        let raw = [good_record(), record(Some(b"k"), b"value", second)].concat();
        assert_eq!(
            raw_produce_records(&bootstrap, &topic, 0, batch(&raw, 2, codec)),
            0,
            "{codec:?} valid"
        );
        expected.extend(["value".to_string(), "value".to_string()]);
        for (l, lie) in lies.iter().enumerate() {
            let raw = record(Some(b"k"), b"value", *lie);
            assert_eq!(
                raw_produce_records(&bootstrap, &topic, 0, batch(&raw, 1, codec)),
                INVALID_RECORD,
                "{codec:?} lie {l}"
            );
        }
        let after = format!("after-{codec:?}");
        produce_good(&bootstrap, &topic, std::slice::from_ref(&after));
        expected.push(after);
    }
    let c = consumer(&bootstrap, &[]);
    assign(&c, &topic, &[0], Offset::Beginning);
    let got: Vec<String> = consume_to_end(&c, &[0], CONSUME_TIMEOUT)
        .iter()
        .map(payload_str)
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn a_null_key_on_a_compacted_topic_is_invalid_record() {
    let raw = [
        good_record(),
        record(
            None,
            b"keyless",
            Lie {
                offset_delta: 1,
                ..Lie::default()
            },
        ),
    ]
    .concat();
    lie_is_refused_and_readers_pass(
        "null key, compacted topic",
        batch(&raw, 2, Codec::Zstd),
        INVALID_RECORD,
        true,
    );
}

#[test]
fn a_control_batch_from_a_client_is_invalid_record() {
    // A commit marker's shape: key = version 0, type 1; value = version 0, epoch 0.
    let marker = record(Some(&[0, 0, 0, 1]), &[0, 0, 0, 0, 0, 0], Lie::default());
    let b = with_attributes(&batch(&marker, 1, Codec::None), 0x20 | 0x10);
    lie_is_refused_and_readers_pass("control batch", b, INVALID_RECORD, false);
}

#[test]
fn a_gzip_bomb_is_refused_without_holding_its_size() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = topic_name("bomb");
    create(&bootstrap, &topic, false);
    // 200 MiB of zeros in one record's value: far past the produce bound.
    let value = vec![0u8; 200 << 20];
    let raw = record(Some(b"k"), &value, Lie::default());
    let bomb = batch(&raw, 1, Codec::Gzip);
    drop((value, raw));
    assert!(bomb.len() < 1 << 20, "the bomb is small on the wire");
    let rss_before = broker.rss_bytes();
    assert_eq!(
        raw_produce_records(&bootstrap, &topic, 0, bomb),
        CORRUPT_MESSAGE
    );
    let grown = broker.rss_bytes().saturating_sub(rss_before);
    assert!(grown < 150 << 20, "RSS grew {} MiB", grown >> 20);
    produce_good(&bootstrap, &topic, &["after".to_string()]);
    let c = consumer(&bootstrap, &[]);
    assign(&c, &topic, &[0], Offset::Beginning);
    let got: Vec<String> = consume_to_end(&c, &[0], CONSUME_TIMEOUT)
        .iter()
        .map(payload_str)
        .collect();
    assert_eq!(got, ["after"]);
}
