//! Malformed input and client-compatibility traps, over raw `std::net::TcpStream`
//! with the `kafka-protocol` crate doing the (de)serialization.
//!
//! Contract checked (issue #3 "Bad input", ../shared/PROTOCOL.md "Traps"):
//! - garbage, truncated, oversized (2 GiB) and unknown-API frames get an error
//!   response or a clean close — never a hang, never a crash — and the broker
//!   keeps serving both an already-open connection and fresh rdkafka clients;
//! - a produce with a corrupt batch gets CORRUPT_MESSAGE (2) and writes nothing;
//! - KIP-511: ApiVersions of an unknown (higher) version gets a v0 response with
//!   UNSUPPORTED_VERSION (35) that still carries the ranges;
//! - Produce is advertised from min version 0 (librdkafka < 2.11 needs it to
//!   enable compression) and v0–2 requests get UNSUPPORTED_VERSION (KIP-896);
//! - flexible and non-flexible versions of ApiVersions and Metadata all decode;
//! - idempotent-producer sequence checks at the wire level.

mod common;

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::*;
use indexmap::IndexMap;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, InitProducerIdRequest, MetadataRequest,
    ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Record, TimestampType};
use rdkafka::consumer::Consumer;

const CORRUPT_MESSAGE: i16 = 2;
const UNSUPPORTED_VERSION: i16 = 35;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
const INVALID_RECORD: i16 = 87;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// How long the broker gets to close a connection after bad input.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

fn api_versions(wire: &mut Wire, version: i16) -> ApiVersionsResponse {
    let req = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("runnel-tests"))
        .with_client_software_version(StrBytes::from_static_str("0.1"));
    wire.call(&req, version)
}

/// An already-open connection still answers after another connection misbehaved.
fn assert_connection_still_answers(wire: &mut Wire) {
    let resp = api_versions(wire, 3);
    assert_eq!(resp.error_code, 0, "ApiVersions on a bystander connection");
}

/// The broker must answer with a frame for `correlation_id` or close the
/// connection; silence until the timeout is a failure.
fn assert_error_frame_or_close(wire: &mut Wire, correlation_id: Option<i32>, what: &str) {
    wire.set_read_timeout(CLOSE_TIMEOUT);
    match wire.read_frame() {
        ReadOutcome::Closed => {}
        ReadOutcome::Frame(mut f) => {
            let Some(id) = correlation_id else {
                panic!("{what}: broker answered a frame it cannot have parsed: {f:?}");
            };
            assert!(f.len() >= 4, "{what}: response frame too short");
            assert_eq!(f.get_i32(), id, "{what}: response correlation id");
        }
        ReadOutcome::TimedOut => {
            panic!("{what}: broker neither answered nor closed within {CLOSE_TIMEOUT:?}")
        }
    }
}

fn assert_closed(wire: &mut Wire, what: &str) {
    wire.set_read_timeout(CLOSE_TIMEOUT);
    match wire.read_frame() {
        ReadOutcome::Closed => {}
        other => panic!("{what}: expected the broker to close the connection, got {other:?}"),
    }
}

#[test]
fn garbage_bytes_close_the_connection_and_the_broker_keeps_serving() {
    let broker = Broker::start();
    let mut bystander = Wire::connect(&broker.bootstrap());
    assert_connection_still_answers(&mut bystander);

    // HTTP on the Kafka port: the "length" is 0x47455420 (~1.2 GB).
    let mut w = Wire::connect(&broker.bootstrap());
    let _ = w.send_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_closed(&mut w, "HTTP request");

    // A well-framed body whose header is nonsense: Metadata v12 with a
    // client_id that claims 32767 bytes in a 12-byte frame.
    let mut w = Wire::connect(&broker.bootstrap());
    let mut body = BytesMut::new();
    body.put_i16(3);
    body.put_i16(12);
    body.put_i32(7);
    body.put_i16(0x7fff);
    body.put_slice(b"ab");
    let _ = w.send_raw(&frame(&body));
    assert_error_frame_or_close(&mut w, Some(7), "header with a lying client_id length");

    // Pseudo-random bytes, framed.
    let mut w = Wire::connect(&broker.bootstrap());
    let mut x: u32 = 0x9e37_79b9;
    let junk: Vec<u8> = (0..512)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let _ = w.send_raw(&frame(&junk));
    // If the junk happens to parse as a header, an error answer carries its
    // "correlation id" (bytes 4..8).
    let junk_correlation = i32::from_be_bytes(junk[4..8].try_into().unwrap());
    assert_error_frame_or_close(&mut w, Some(junk_correlation), "framed random bytes");

    assert_connection_still_answers(&mut bystander);
    assert_broker_serves(&broker.bootstrap());
}

#[test]
fn truncated_frame_then_close_leaves_the_broker_serving() {
    let broker = Broker::start();
    let mut bystander = Wire::connect(&broker.bootstrap());

    // Half a frame, then the client goes away entirely.
    {
        let mut w = Wire::connect(&broker.bootstrap());
        let (full, _) = w.encode_request(&MetadataRequest::default(), 1);
        w.send_raw(&full[..full.len() / 2]).unwrap();
    }
    // Half a length prefix, then EOF: the broker must close its side.
    let mut w = Wire::connect(&broker.bootstrap());
    w.send_raw(&[0, 0]).unwrap();
    w.shutdown_write();
    assert_closed(&mut w, "EOF inside the length prefix");

    // Half a body, then EOF.
    let mut w = Wire::connect(&broker.bootstrap());
    let (full, _) = w.encode_request(&MetadataRequest::default(), 1);
    w.send_raw(&full[..full.len() - 3]).unwrap();
    w.shutdown_write();
    assert_closed(&mut w, "EOF inside a frame body");

    assert_connection_still_answers(&mut bystander);
    assert_broker_serves(&broker.bootstrap());
}

#[test]
fn frame_claiming_2_gib_is_refused_without_allocating_it() {
    let broker = Broker::start();
    let mut bystander = Wire::connect(&broker.bootstrap());
    let rss_before = broker.rss_bytes();

    for (len, what) in [
        (0x7fff_ffffu32, "length 2 GiB - 1"),
        (0x8000_0000u32, "length 2 GiB (negative as i32)"),
        (0xffff_ffffu32, "length -1"),
        (
            200 * 1024 * 1024,
            "length 200 MiB (over socket.request.max.bytes)",
        ),
    ] {
        let mut w = Wire::connect(&broker.bootstrap());
        let mut bytes = BytesMut::new();
        bytes.put_u32(len);
        bytes.put_slice(&[0u8; 64]);
        let _ = w.send_raw(&bytes);
        assert_closed(&mut w, what);
    }

    let rss_after = broker.rss_bytes();
    assert!(
        rss_after < rss_before + 256 * 1024 * 1024,
        "broker RSS grew from {rss_before} to {rss_after} bytes after oversized frames"
    );
    assert_connection_still_answers(&mut bystander);
    assert_broker_serves(&broker.bootstrap());
}

#[test]
fn unknown_api_key_gets_an_error_or_a_clean_close() {
    let broker = Broker::start();
    let mut bystander = Wire::connect(&broker.bootstrap());

    for (api_key, version) in [(999i16, 0i16), (-1, 0), (i16::MAX, 3)] {
        let mut w = Wire::connect(&broker.bootstrap());
        let mut body = BytesMut::new();
        body.put_i16(api_key);
        body.put_i16(version);
        body.put_i32(4242);
        body.put_i16(5);
        body.put_slice(b"tests");
        body.put_slice(&[0u8; 16]);
        w.send_raw(&frame(&body)).unwrap();
        assert_error_frame_or_close(&mut w, Some(4242), &format!("api key {api_key}"));
    }

    assert_connection_still_answers(&mut bystander);
    assert_broker_serves(&broker.bootstrap());
}

// ---------------------------------------------------------------------------
// Corrupt record batches

fn record(i: i64, producer_id: i64, producer_epoch: i16, sequence: i32) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: i,
        // offset - sequence must be the same for every record, or the encoder
        // splits them into one batch per record; -1 + i keeps base sequence -1.
        sequence: sequence.wrapping_add(i as i32),
        timestamp: 1_700_000_000_000 + i,
        key: Some(Bytes::from(format!("k{i}"))),
        value: Some(Bytes::from(format!("value-{i}"))),
        headers: IndexMap::new(),
    }
}

/// A valid magic-2 batch of `n` records.
fn batch(n: i64, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> BytesMut {
    let records: Vec<Record> = (0..n)
        .map(|i| record(i, producer_id, producer_epoch, base_sequence))
        .collect();
    let buf = encode_uncompressed(&records);
    let info = kafka_protocol::records::RecordBatchDecoder::decode_batch_info(&mut buf.clone())
        .expect("decode own batch");
    assert_eq!(info.len(), 1, "test helper must build exactly one batch");
    // Mutable: callers corrupt it.
    BytesMut::from(buf.as_ref())
}

fn produce_request(topic: &str, partitions: Vec<(i32, Bytes)>) -> ProduceRequest {
    ProduceRequest::default()
        .with_transactional_id(None)
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(
                partitions
                    .into_iter()
                    .map(|(p, b)| {
                        PartitionProduceData::default()
                            .with_index(p)
                            .with_records(Some(b))
                    })
                    .collect(),
            )])
}

/// (partition, error_code, base_offset) for every partition in the response.
fn produce_results(resp: &ProduceResponse) -> Vec<(i32, i16, i64)> {
    let mut out: Vec<(i32, i16, i64)> = resp
        .responses
        .iter()
        .flat_map(|t| {
            t.partition_responses
                .iter()
                .map(|p| (p.index, p.error_code, p.base_offset))
        })
        .collect();
    out.sort_unstable();
    out
}

fn high_watermark(bootstrap: &str, topic: &str, partition: i32) -> i64 {
    let c = consumer(bootstrap, &[]);
    let (_low, high) = c
        .fetch_watermarks(topic, partition, CLIENT_TIMEOUT)
        .expect("fetch_watermarks");
    high
}

#[test]
fn produce_with_a_corrupt_batch_gets_corrupt_message_and_writes_nothing() {
    let broker = Broker::start();
    let topic = topic_name("corrupt");
    create_topic_blocking(&broker.bootstrap(), &topic, 2);
    let mut w = Wire::connect(&broker.bootstrap());

    let good = batch(3, -1, -1, -1);
    // Last byte of the last record: covered by the CRC32C.
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    // Magic byte 1 on a v2-shaped batch (magic is at byte 16, outside the CRC).
    let mut bad_magic = good.clone();
    bad_magic[16] = 1;
    // batchLength (bytes 8..12) claims 100 bytes more than there are.
    let mut bad_length = good.clone();
    let claimed = i32::from_be_bytes(bad_length[8..12].try_into().unwrap()) + 100;
    bad_length[8..12].copy_from_slice(&claimed.to_be_bytes());

    // Produce v3 is the oldest non-flexible version librdkafka sends, v9 the first flexible one.
    for version in [3i16, 9] {
        let resp = w.call(
            &produce_request(&topic, vec![(0, bad_crc.clone().freeze())]),
            version,
        );
        assert_eq!(
            produce_results(&resp),
            vec![(0, CORRUPT_MESSAGE, -1)],
            "Produce v{version} with a bad CRC: CORRUPT_MESSAGE, base offset -1"
        );
        for (what, b) in [
            ("wrong magic", &bad_magic),
            ("lying batch length", &bad_length),
        ] {
            let resp = w.call(
                &produce_request(&topic, vec![(0, b.clone().freeze())]),
                version,
            );
            let res = produce_results(&resp);
            assert_eq!(res.len(), 1);
            assert!(
                res[0].1 == CORRUPT_MESSAGE || res[0].1 == INVALID_RECORD,
                "Produce v{version} with {what}: expected CORRUPT_MESSAGE (2) or INVALID_RECORD (87), got {res:?}"
            );
        }
    }
    assert_eq!(
        high_watermark(&broker.bootstrap(), &topic, 0),
        0,
        "nothing written after corrupt batches"
    );

    // One request, two partitions: the corrupt one fails alone.
    let resp = w.call(
        &produce_request(
            &topic,
            vec![(0, bad_crc.clone().freeze()), (1, good.clone().freeze())],
        ),
        9,
    );
    assert_eq!(
        produce_results(&resp),
        vec![(0, CORRUPT_MESSAGE, -1), (1, 0, 0)],
        "per-partition results"
    );

    // Same connection, valid batch: accepted at offset 0.
    let resp = w.call(
        &produce_request(&topic, vec![(0, good.clone().freeze())]),
        9,
    );
    assert_eq!(
        produce_results(&resp),
        vec![(0, 0, 0)],
        "good batch after corrupt ones"
    );
    assert_eq!(high_watermark(&broker.bootstrap(), &topic, 0), 3);
    assert_eq!(high_watermark(&broker.bootstrap(), &topic, 1), 3);

    assert_broker_serves(&broker.bootstrap());
}

// ---------------------------------------------------------------------------
// Compatibility traps (PROTOCOL.md)

/// ApiVersions v3 ranges as a map key -> (min, max), asserting no key twice.
fn advertised(resp: &ApiVersionsResponse) -> std::collections::BTreeMap<i16, (i16, i16)> {
    let mut out = std::collections::BTreeMap::new();
    for ApiVersion {
        api_key,
        min_version,
        max_version,
        ..
    } in &resp.api_keys
    {
        assert!(
            min_version <= max_version,
            "api key {api_key}: min {min_version} > max {max_version}"
        );
        assert!(
            out.insert(*api_key, (*min_version, *max_version)).is_none(),
            "api key {api_key} advertised twice"
        );
    }
    out
}

#[test]
fn api_versions_v0_to_v3_decode_and_advertise_the_required_ranges() {
    let broker = Broker::start();
    let mut w = Wire::connect(&broker.bootstrap());
    let mut first = None;
    for version in 0..=3i16 {
        let resp = api_versions(&mut w, version);
        assert_eq!(resp.error_code, 0, "ApiVersions v{version} error");
        let ranges = advertised(&resp);
        if let Some(f) = &first {
            assert_eq!(
                &ranges, f,
                "ApiVersions v{version} advertises different ranges than v0"
            );
        } else {
            first = Some(ranges);
        }
    }
    let ranges = first.unwrap();

    // Produce: min 0 on purpose (librdkafka < 2.11 turns compression off
    // otherwise), and at least up to 7 (zstd).
    let (pmin, pmax) = ranges[&(ApiKey::Produce as i16)];
    assert_eq!(pmin, 0, "Produce must be advertised from version 0");
    assert!(pmax >= 7, "Produce max {pmax} < 7: zstd needs v7");

    // "serve at least" column of PROTOCOL.md for the APIs served now.
    let required: &[(ApiKey, i16, i16)] = &[
        (ApiKey::ApiVersions, 0, 3),
        (ApiKey::Metadata, 0, 12),
        (ApiKey::Produce, 3, 10),
        (ApiKey::Fetch, 4, 16),
        (ApiKey::ListOffsets, 1, 8),
        (ApiKey::CreateTopics, 2, 7),
        (ApiKey::DeleteTopics, 1, 6),
        (ApiKey::InitProducerId, 0, 5),
        (ApiKey::OffsetForLeaderEpoch, 2, 4),
        (ApiKey::DescribeConfigs, 1, 4),
    ];
    for &(key, min, max) in required {
        let got = ranges.get(&(key as i16)).copied();
        let ok = matches!(got, Some((lo, hi)) if lo <= min && hi >= max);
        assert!(ok, "{key:?}: advertised {got:?}, must cover {min}..={max}");
    }
    // Everything advertised must be something the protocol defines.
    for (&key, &(_, max)) in &ranges {
        let api =
            ApiKey::try_from(key).unwrap_or_else(|_| panic!("unknown api key {key} advertised"));
        let _ = api.request_header_version(max);
    }
}

#[test]
fn api_versions_of_an_unknown_version_gets_the_kip_511_fallback() {
    let broker = Broker::start();
    let mut w = Wire::connect(&broker.bootstrap());
    let (_, max) = advertised(&api_versions(&mut w, 3))[&(ApiKey::ApiVersions as i16)];

    // max+1 (v4 today: what Java 4.x sends first) and 127 (far future).
    for version in [max + 1, 127] {
        let mut w = Wire::connect(&broker.bootstrap());
        // Header v2 (flexible) with the unknown version; body shaped like v3,
        // which is all a client of the future could be expected to send.
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::ApiVersions as i16)
            .with_request_api_version(version)
            .with_correlation_id(511)
            .with_client_id(Some(StrBytes::from_static_str("future-client")));
        let mut body = BytesMut::new();
        header.encode(&mut body, 2).unwrap();
        ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("future-client"))
            .with_client_software_version(StrBytes::from_static_str("9.9"))
            .encode(&mut body, 3)
            .unwrap();
        w.send_raw(&frame(&body)).unwrap();

        let mut f = match w.read_frame() {
            ReadOutcome::Frame(f) => f,
            other => panic!(
                "ApiVersions v{version}: expected a v0 fallback response, got {other:?} (KIP-511)"
            ),
        };
        let h = ResponseHeader::decode(&mut f, 0).unwrap();
        assert_eq!(h.correlation_id, 511);
        let resp = ApiVersionsResponse::decode(&mut f, 0).unwrap_or_else(|e| {
            panic!("ApiVersions v{version}: fallback must be a v0 response: {e:#}")
        });
        assert_eq!(
            resp.error_code, UNSUPPORTED_VERSION,
            "ApiVersions v{version}: error code"
        );
        let ranges = advertised(&resp);
        let av = ranges.get(&(ApiKey::ApiVersions as i16)).copied();
        assert!(
            matches!(av, Some((0, m)) if m >= 3),
            "fallback must carry the ApiVersions range, got {av:?}"
        );
        assert!(
            ranges.contains_key(&(ApiKey::Produce as i16)),
            "fallback must carry all ranges"
        );

        // The client then retries with the broker's max; that must work on the same connection.
        let ok = api_versions(&mut w, max);
        assert_eq!(ok.error_code, 0);
    }
}

#[test]
fn metadata_every_version_0_to_12_decodes() {
    let broker = Broker::start();
    let topic = topic_name("md");
    create_topic_blocking(&broker.bootstrap(), &topic, 3);
    let mut w = Wire::connect(&broker.bootstrap());

    for version in 0..=12i16 {
        let mut req = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.clone()))))]));
        if version >= 4 {
            req = req.with_allow_auto_topic_creation(false);
        }
        let resp = w.call(&req, version);
        assert_eq!(resp.brokers.len(), 1, "Metadata v{version}: brokers");
        let b = &resp.brokers[0];
        assert_eq!(
            b.host.as_str(),
            "127.0.0.1",
            "Metadata v{version}: advertised host"
        );
        assert_eq!(
            b.port,
            broker.port() as i32,
            "Metadata v{version}: advertised port"
        );
        assert_eq!(resp.topics.len(), 1, "Metadata v{version}: topics");
        let t = &resp.topics[0];
        assert_eq!(t.error_code, 0, "Metadata v{version}: topic error");
        assert_eq!(t.name.as_ref().map(|n| n.0.as_str()), Some(topic.as_str()));
        let mut parts: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
        parts.sort_unstable();
        assert_eq!(parts, vec![0, 1, 2], "Metadata v{version}: partitions");
        for p in &t.partitions {
            assert_eq!(p.error_code, 0);
            assert_eq!(p.leader_id, b.node_id, "Metadata v{version}: leader");
        }
    }

    // Unknown topic with auto-creation off in the request (v4+).
    for version in [4i16, 12] {
        let req = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_static_str("no-such-topic")),
            ))]))
            .with_allow_auto_topic_creation(false);
        let resp = w.call(&req, version);
        assert_eq!(resp.topics.len(), 1);
        assert_eq!(
            resp.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION,
            "Metadata v{version}: unknown topic"
        );
    }
}

/// Produce v0–2 (message sets v0/v1) are advertised but refused, like Kafka 4.0
/// (KIP-896). Encoded by hand: the kafka-protocol crate starts at v3.
#[test]
fn produce_v0_to_v2_are_answered_with_unsupported_version() {
    let broker = Broker::start();
    let topic = topic_name("oldproduce");
    create_topic_blocking(&broker.bootstrap(), &topic, 1);

    for version in 0..=2i16 {
        let mut w = Wire::connect(&broker.bootstrap());
        let mut body = BytesMut::new();
        body.put_i16(ApiKey::Produce as i16);
        body.put_i16(version);
        body.put_i32(100 + version as i32);
        body.put_i16(5);
        body.put_slice(b"tests");
        body.put_i16(1); // acks
        body.put_i32(10_000); // timeout
        body.put_i32(1); // [topic]
        body.put_i16(topic.len() as i16);
        body.put_slice(topic.as_bytes());
        body.put_i32(1); // [partition]
        body.put_i32(0);
        let set = batch(1, -1, -1, -1); // contents irrelevant: the version is refused
        body.put_i32(set.len() as i32);
        body.put_slice(&set);
        w.send_raw(&frame(&body)).unwrap();

        let mut f = match w.read_frame() {
            ReadOutcome::Frame(f) => f,
            other => panic!(
                "Produce v{version}: expected an UNSUPPORTED_VERSION response, got {other:?}"
            ),
        };
        // Response v0–2: corr, [topic: name, [partition, error, base_offset, (v2) log_append_time]], (v1+) throttle.
        assert_eq!(
            f.get_i32(),
            100 + version as i32,
            "Produce v{version}: correlation id"
        );
        assert_eq!(f.get_i32(), 1, "Produce v{version}: one topic");
        let n = f.get_i16() as usize;
        assert_eq!(&f.split_to(n)[..], topic.as_bytes());
        assert_eq!(f.get_i32(), 1, "one partition");
        assert_eq!(f.get_i32(), 0, "partition index");
        assert_eq!(
            f.get_i16(),
            UNSUPPORTED_VERSION,
            "Produce v{version}: partition error"
        );
    }
    assert_eq!(
        high_watermark(&broker.bootstrap(), &topic, 0),
        0,
        "a refused Produce v0-2 writes nothing"
    );
    assert_broker_serves(&broker.bootstrap());
}

// ---------------------------------------------------------------------------
// Idempotent producer at the wire level

#[test]
fn idempotent_duplicate_batch_is_not_written_twice_and_a_sequence_gap_is_refused() {
    let broker = Broker::start();
    let topic = topic_name("idem-wire");
    create_topic_blocking(&broker.bootstrap(), &topic, 1);
    let mut w = Wire::connect(&broker.bootstrap());

    let init = w.call(
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000),
        4,
    );
    assert_eq!(init.error_code, 0, "InitProducerId error");
    let pid = init.producer_id.0;
    let epoch = init.producer_epoch;
    assert!(
        pid >= 0 && epoch >= 0,
        "InitProducerId gave pid {pid} epoch {epoch}"
    );

    let first = batch(3, pid, epoch, 0).freeze();
    let resp = w.call(&produce_request(&topic, vec![(0, first.clone())]), 9);
    assert_eq!(
        produce_results(&resp),
        vec![(0, 0, 0)],
        "first idempotent batch"
    );

    // The same batch again, as a retry would send it.
    let resp = w.call(&produce_request(&topic, vec![(0, first.clone())]), 9);
    let res = produce_results(&resp);
    assert!(
        res == vec![(0, 0, 0)] || res[0].1 == DUPLICATE_SEQUENCE_NUMBER,
        "duplicate batch: expected NONE with the original base offset 0, or DUPLICATE_SEQUENCE_NUMBER; got {res:?}"
    );
    assert_eq!(
        high_watermark(&broker.bootstrap(), &topic, 0),
        3,
        "duplicate batch must not be appended"
    );

    // A gap in the sequence: 3 is next, 10 is out of order.
    let gap = batch(2, pid, epoch, 10).freeze();
    let resp = w.call(&produce_request(&topic, vec![(0, gap)]), 9);
    assert_eq!(
        produce_results(&resp)[0].1,
        OUT_OF_ORDER_SEQUENCE_NUMBER,
        "sequence gap"
    );
    assert_eq!(
        high_watermark(&broker.bootstrap(), &topic, 0),
        3,
        "out-of-order batch must not be appended"
    );

    let next = batch(2, pid, epoch, 3).freeze();
    let resp = w.call(&produce_request(&topic, vec![(0, next)]), 9);
    assert_eq!(
        produce_results(&resp),
        vec![(0, 0, 3)],
        "next in-sequence batch"
    );
    assert_eq!(high_watermark(&broker.bootstrap(), &topic, 0), 5);
}

/// Kafka rebuilds idempotent-producer state (last sequences per producer id)
/// from the log on recovery, so a retry that crosses a broker restart is still
/// recognised as a duplicate. Deterministic form of the rdkafka restart test.
#[test]
fn idempotent_producer_state_survives_a_restart() {
    let mut broker = Broker::start();
    let topic = topic_name("idem-restart");
    create_topic_blocking(&broker.bootstrap(), &topic, 1);
    let mut w = Wire::connect(&broker.bootstrap());
    let init = w.call(
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000),
        4,
    );
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    let first = batch(3, pid, epoch, 0).freeze();
    let second = batch(2, pid, epoch, 3).freeze();
    assert_eq!(
        produce_results(&w.call(&produce_request(&topic, vec![(0, first.clone())]), 9)),
        vec![(0, 0, 0)]
    );
    assert_eq!(
        produce_results(&w.call(&produce_request(&topic, vec![(0, second.clone())]), 9)),
        vec![(0, 0, 3)]
    );
    drop(w);

    broker.restart(); // SIGKILL + start on the same data dir
    let mut w = Wire::connect(&broker.bootstrap());
    // The client never saw the ack of `second` and retries it.
    let res = produce_results(&w.call(&produce_request(&topic, vec![(0, second.clone())]), 9));
    assert!(
        res == vec![(0, 0, 3)] || res[0].1 == DUPLICATE_SEQUENCE_NUMBER,
        "retry of an acknowledged batch after restart: expected NONE at base offset 3 or DUPLICATE_SEQUENCE_NUMBER, got {res:?}"
    );
    assert_eq!(
        high_watermark(&broker.bootstrap(), &topic, 0),
        5,
        "retried batch appended twice after restart"
    );
    // And the sequence continues where the log says, not wherever the client says.
    let gap = batch(1, pid, epoch, 9).freeze();
    let res = produce_results(&w.call(&produce_request(&topic, vec![(0, gap)]), 9));
    assert_eq!(
        res[0].1, OUT_OF_ORDER_SEQUENCE_NUMBER,
        "sequence gap after restart: {res:?}"
    );
    let next = batch(1, pid, epoch, 5).freeze();
    assert_eq!(
        produce_results(&w.call(&produce_request(&topic, vec![(0, next)]), 9)),
        vec![(0, 0, 5)]
    );
}
