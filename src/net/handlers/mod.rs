//! Request dispatch: one module per Kafka API, each declaring the version range it
//! serves. `SUPPORTED` is what ApiVersions advertises.

pub mod api_versions;
pub mod configs;
pub mod create_topics;
pub mod delete_records;
pub mod describe_cluster;
pub mod fetch;
pub mod fetch_encode;
pub mod fetch_session;
pub mod groups;
pub mod init_producer_id;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;

use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::net::connection::Request;
use crate::shard::Shard;

/// (api key, min version, max version) advertised by ApiVersions.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, produce::MIN_ADVERTISED, produce::MAX),
    (ApiKey::Fetch, fetch::MIN, fetch::MAX),
    (ApiKey::ListOffsets, list_offsets::MIN, list_offsets::MAX),
    (ApiKey::Metadata, metadata::MIN, metadata::MAX),
    (ApiKey::ApiVersions, api_versions::MIN, api_versions::MAX),
    (
        ApiKey::CreateTopics,
        create_topics::CREATE_MIN,
        create_topics::CREATE_MAX,
    ),
    (
        ApiKey::DeleteTopics,
        create_topics::DELETE_MIN,
        create_topics::DELETE_MAX,
    ),
    (
        ApiKey::InitProducerId,
        init_producer_id::MIN,
        init_producer_id::MAX,
    ),
    (
        ApiKey::OffsetForLeaderEpoch,
        offset_for_leader_epoch::MIN,
        offset_for_leader_epoch::MAX,
    ),
    (
        ApiKey::CreatePartitions,
        create_topics::PARTITIONS_MIN,
        create_topics::PARTITIONS_MAX,
    ),
    (
        ApiKey::DescribeConfigs,
        configs::DESCRIBE_MIN,
        configs::DESCRIBE_MAX,
    ),
    (ApiKey::AlterConfigs, configs::ALTER_MIN, configs::ALTER_MAX),
    (
        ApiKey::IncrementalAlterConfigs,
        configs::INCREMENTAL_MIN,
        configs::INCREMENTAL_MAX,
    ),
    (
        ApiKey::DeleteRecords,
        delete_records::MIN,
        delete_records::MAX,
    ),
    (
        ApiKey::DescribeCluster,
        describe_cluster::MIN,
        describe_cluster::MAX,
    ),
    (
        ApiKey::FindCoordinator,
        groups::FIND_COORDINATOR_MIN,
        groups::FIND_COORDINATOR_MAX,
    ),
    (ApiKey::JoinGroup, groups::JOIN_MIN, groups::JOIN_MAX),
    (
        ApiKey::Heartbeat,
        groups::HEARTBEAT_MIN,
        groups::HEARTBEAT_MAX,
    ),
    (ApiKey::LeaveGroup, groups::LEAVE_MIN, groups::LEAVE_MAX),
    (ApiKey::SyncGroup, groups::SYNC_MIN, groups::SYNC_MAX),
    (
        ApiKey::OffsetCommit,
        groups::OFFSET_COMMIT_MIN,
        groups::OFFSET_COMMIT_MAX,
    ),
    (
        ApiKey::OffsetFetch,
        groups::OFFSET_FETCH_MIN,
        groups::OFFSET_FETCH_MAX,
    ),
    (ApiKey::ListGroups, groups::LIST_MIN, groups::LIST_MAX),
    (
        ApiKey::DescribeGroups,
        groups::DESCRIBE_MIN,
        groups::DESCRIBE_MAX,
    ),
    (ApiKey::DeleteGroups, groups::DELETE_MIN, groups::DELETE_MAX),
    (
        ApiKey::OffsetDelete,
        groups::OFFSET_DELETE_MIN,
        groups::OFFSET_DELETE_MAX,
    ),
];

pub fn is_known_api(api_key: i16) -> bool {
    ApiKey::try_from(api_key).is_ok()
}

fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, lo, hi)| (*lo, *hi))
}

/// What the connection does after a request.
pub enum Reply {
    Frame(BytesMut),
    /// A frame as buffers written back to back (record batches are not copied).
    Chunks(Vec<bytes::Bytes>),
    /// No response (Produce with acks=0).
    Nothing,
    /// Close the connection (malformed or unsupported request, logged).
    Close,
}

/// Handles one request.
pub async fn dispatch(shard: &Rc<Shard>, req: Request) -> Reply {
    let Ok(key) = ApiKey::try_from(req.api_key) else {
        return Reply::Close;
    };
    let version = req.api_version;
    let in_range = supported_range(key).is_some_and(|(lo, hi)| (lo..=hi).contains(&version));
    if key == ApiKey::ApiVersions && !in_range {
        // KIP-511: answer an unknown ApiVersions version with v0 carrying our ranges.
        return api_versions::unsupported_version_response(req.correlation_id);
    }
    if key == ApiKey::Produce && (produce::MIN_ADVERTISED..produce::MIN).contains(&version) {
        return produce::legacy_unsupported(&req);
    }
    if !in_range {
        crate::warn_limited!(api = ?key, version, "closing connection: API version not supported");
        return Reply::Close;
    }
    let (header, kind) = match decode_request(key, version, &req.frame) {
        Ok(v) => v,
        Err(e) => {
            // The whole chain: the outer context names the message, the inner one the reason.
            crate::warn_limited!(api = ?key, version, error = %format!("{e:#}"), "malformed request");
            return Reply::Close;
        }
    };
    let ctx = Ctx {
        correlation_id: header.correlation_id,
        version,
        key,
    };
    match kind {
        RequestKind::ApiVersions(r) => ctx.respond(&api_versions::handle(r, version)),
        RequestKind::Metadata(r) => ctx.respond(&metadata::handle(shard, r, version).await),
        RequestKind::Produce(r) => match produce::handle(shard, r, version).await {
            Some(resp) => ctx.respond(&resp),
            None => Reply::Nothing,
        },
        RequestKind::Fetch(r) => {
            let out = fetch::handle(shard, r, version).await;
            Reply::Chunks(fetch_encode::encode(
                ctx.correlation_id,
                version,
                out.error_code,
                out.session_id,
                &out.topics,
            ))
        }
        RequestKind::ListOffsets(r) => ctx.respond(&list_offsets::handle(shard, r, version).await),
        RequestKind::CreateTopics(r) => {
            ctx.respond(&create_topics::create(shard, r, version).await)
        }
        RequestKind::DeleteTopics(r) => {
            ctx.respond(&create_topics::delete(shard, r, version).await)
        }
        RequestKind::CreatePartitions(r) => {
            ctx.respond(&create_topics::create_partitions(shard, r, version).await)
        }
        RequestKind::InitProducerId(r) => ctx.respond(&init_producer_id::handle(shard, r)),
        RequestKind::OffsetForLeaderEpoch(r) => {
            ctx.respond(&offset_for_leader_epoch::handle(shard, r, version).await)
        }
        RequestKind::DescribeConfigs(r) => ctx.respond(&configs::describe(shard, r)),
        RequestKind::AlterConfigs(r) => ctx.respond(&configs::alter(shard, r).await),
        RequestKind::IncrementalAlterConfigs(r) => {
            ctx.respond(&configs::incremental_alter(shard, r).await)
        }
        RequestKind::DeleteRecords(r) => ctx.respond(&delete_records::handle(shard, r).await),
        RequestKind::DescribeCluster(_) => ctx.respond(&describe_cluster::handle(shard)),
        RequestKind::FindCoordinator(r) => {
            ctx.respond(&groups::find_coordinator(shard, r, version).await)
        }
        RequestKind::JoinGroup(r) => {
            let client_id = header.client_id.as_deref().unwrap_or("").to_string();
            ctx.respond(&groups::join_group(shard, r, version, client_id).await)
        }
        RequestKind::SyncGroup(r) => ctx.respond(&groups::sync_group(shard, r, version).await),
        RequestKind::Heartbeat(r) => ctx.respond(&groups::heartbeat(shard, r).await),
        RequestKind::LeaveGroup(r) => ctx.respond(&groups::leave_group(shard, r, version).await),
        RequestKind::OffsetCommit(r) => {
            ctx.respond(&groups::offset_commit(shard, r, version).await)
        }
        RequestKind::OffsetFetch(r) => ctx.respond(&groups::offset_fetch(shard, r, version).await),
        RequestKind::ListGroups(r) => ctx.respond(&groups::list_groups(shard, r, version).await),
        RequestKind::DescribeGroups(r) => {
            ctx.respond(&groups::describe_groups(shard, r, version).await)
        }
        RequestKind::DeleteGroups(r) => ctx.respond(&groups::delete_groups(shard, r).await),
        RequestKind::OffsetDelete(r) => ctx.respond(&groups::offset_delete(shard, r).await),
        _ => {
            crate::warn_limited!(api = ?key, "closing connection: API not implemented");
            Reply::Close
        }
    }
}

/// Most bytes the arrays of one decoded request may take in memory. Counts that fit
/// their bytes can still decode to far more than the frame (an empty topic name is 2
/// bytes on the wire, ~72 decoded: a 100 MB Metadata request of them would be 3.6 GB).
/// Real requests stay far below: 100,000 topics or partitions take under 16 MiB.
pub const REQUEST_DECODED_BYTES_MAX: usize = 64 << 20;

/// Decodes a request frame (header + body, after the 4-byte size) of an API and version
/// this broker serves. The fuzz target `request_frame` drives this exact path.
pub fn decode_request(
    key: ApiKey,
    version: i16,
    frame: &bytes::Bytes,
) -> anyhow::Result<(RequestHeader, RequestKind)> {
    let mut body = frame.clone();
    let header_version = key.request_header_version(version);
    // The decoders are generated code fed by the network: a panic in one must not take
    // the shard down with it, so it is contained and treated as a malformed request.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        kafka_protocol::protocol::types::with_decoded_bytes_max(REQUEST_DECODED_BYTES_MAX, || {
            let header = RequestHeader::decode(&mut body, header_version)?;
            let kind = RequestKind::decode(key, &mut body, version)?;
            Ok::<_, anyhow::Error>((header, kind))
        })
    }))
    .unwrap_or_else(|_| Err(anyhow::anyhow!("decoder panicked on a malformed request")))
}

/// Whether `version` of `key` is served (decoded and handled).
pub fn is_served(key: ApiKey, version: i16) -> bool {
    supported_range(key).is_some_and(|(lo, hi)| (lo..=hi).contains(&version))
        && !(key == ApiKey::Produce && version < produce::MIN)
}

pub struct Ctx {
    pub correlation_id: i32,
    pub version: i16,
    pub key: ApiKey,
}

impl Ctx {
    /// Encodes size + response header + body straight into one buffer.
    pub fn respond<R: Encodable>(&self, body: &R) -> Reply {
        let header_version = self.key.response_header_version(self.version);
        let mut out = BytesMut::with_capacity(256);
        out.put_i32(0);
        out.put_i32(self.correlation_id);
        if header_version >= 1 {
            out.put_u8(0); // no tagged fields
        }
        if let Err(e) = body.encode(&mut out, self.version) {
            // Only our own response values reach here: a bug, not bad input.
            tracing::error!(api = ?self.key, version = self.version, error = %e, "response encoding failed");
            return Reply::Close;
        }
        let len = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        Reply::Frame(out)
    }
}

/// Work for `Shard::on_partitions` from `(topic, partition, input)` in request order:
/// each item is routed to its partition's owning shard, `None` when the topic or
/// partition is unknown.
pub fn partition_work<'a, T>(
    shard: &Shard,
    items: impl IntoIterator<Item = (&'a str, i32, T)>,
) -> Vec<Option<(usize, String, i32, T)>> {
    let image = shard.image();
    items
        .into_iter()
        .map(|(topic, partition, input)| {
            let owner = image
                .topic(topic)
                .and_then(|m| shard.owner_of(&m.owners, partition))?;
            Some((owner, topic.to_string(), partition, input))
        })
        .collect()
}

pub fn str_bytes(s: &str) -> kafka_protocol::protocol::StrBytes {
    kafka_protocol::protocol::StrBytes::from_string(s.to_string())
}

pub fn topic_name(s: &str) -> kafka_protocol::messages::TopicName {
    kafka_protocol::messages::TopicName(str_bytes(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// A request frame (after the 4-byte size): header v1 (v2 when `flexible`) with
    /// client id "t", then `body`.
    fn frame_of(key: ApiKey, version: i16, flexible: bool, body: &[u8]) -> bytes::Bytes {
        let mut f = BytesMut::new();
        f.put_i16(key as i16);
        f.put_i16(version);
        f.put_i32(7);
        f.put_i16(1);
        f.put_u8(b't');
        if flexible {
            f.put_u8(0); // no tagged fields
        }
        f.put_slice(body);
        f.freeze()
    }

    fn put_uvarint(out: &mut BytesMut, mut v: u64) {
        while v >= 0x80 {
            out.put_u8((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.put_u8(v as u8);
    }

    fn refused_as_a_claim(key: ApiKey, version: i16, frame: &bytes::Bytes) {
        assert!(is_served(key, version), "{key:?} v{version}");
        let e = decode_request(key, version, frame).expect_err("a count that cannot fit");
        assert!(
            format!("{e:#}").contains("Array claims"),
            "{key:?} v{version}: refused for another reason: {e:#}"
        );
    }

    /// Each element takes at least one byte on the wire, so a count above the bytes
    /// left is refused before any allocation (the old bound, `min(count, bytes left)`
    /// elements, still reserved ~112 bytes per CreatableTopic: 11 GB for 100 MB).
    #[test]
    fn create_topics_claiming_more_topics_than_its_bytes_hold_is_refused() {
        let zeros = vec![0u8; 1 << 20];
        let mut body = BytesMut::new();
        body.put_i32(i32::MAX);
        body.put_slice(&zeros);
        let frame = frame_of(ApiKey::CreateTopics, 4, false, &body);
        refused_as_a_claim(ApiKey::CreateTopics, 4, &frame);

        // Flexible versions: a compact (varint) count.
        let mut body = BytesMut::new();
        put_uvarint(&mut body, 1 << 31);
        body.put_slice(&zeros);
        let frame = frame_of(ApiKey::CreateTopics, 7, true, &body);
        refused_as_a_claim(ApiKey::CreateTopics, 7, &frame);
    }

    #[test]
    fn metadata_and_delete_topics_claiming_huge_arrays_are_refused() {
        let mut body = BytesMut::new();
        body.put_i32(i32::MAX);
        body.put_slice(&[0u8; 4096]);
        let frame = frame_of(ApiKey::Metadata, 4, false, &body);
        refused_as_a_claim(ApiKey::Metadata, 4, &frame);

        // A topic name takes at least its 2-byte length: 3,000 names cannot fit in
        // 4 KiB, though 3,000 is below the byte count.
        let mut body = BytesMut::new();
        body.put_i32(3_000);
        body.put_slice(&[0u8; 4096]);
        let frame = frame_of(ApiKey::DeleteTopics, 3, false, &body);
        refused_as_a_claim(ApiKey::DeleteTopics, 3, &frame);
    }

    /// A count that fits its bytes but would decode to more than
    /// `REQUEST_DECODED_BYTES_MAX` is refused (found by fuzz/ create_topics: 4 M empty
    /// topic names in 8 MiB asked for a 300 MB vector).
    #[test]
    fn a_request_that_would_decode_past_its_memory_bound_is_refused() {
        let mut body = BytesMut::new();
        body.put_i32(4 << 20);
        body.put_slice(&vec![0u8; 8 << 20]);
        let frame = frame_of(ApiKey::Metadata, 0, false, &body);
        let e = decode_request(ApiKey::Metadata, 0, &frame).expect_err("over the bound");
        assert!(format!("{e:#}").contains("budget"), "{e:#}");
        // The bound is per request: the next decode on this thread starts afresh.
        let mut body = BytesMut::new();
        body.put_i32(1000);
        body.put_slice(&[0u8; 2000]);
        let frame = frame_of(ApiKey::Metadata, 0, false, &body);
        assert!(decode_request(ApiKey::Metadata, 0, &frame).is_ok());
    }

    /// Unknown tagged fields are map entries: their count is charged like an array's
    /// (4 M of 2 bytes each fit in 8 MiB but would be ~256 MB of map).
    #[test]
    fn a_flexible_request_claiming_millions_of_tagged_fields_is_refused() {
        let mut body = BytesMut::new();
        body.put_u8(1); // client software name: ""
        body.put_u8(1); // client software version: ""
        put_uvarint(&mut body, 4_000_000);
        body.put_slice(&vec![0u8; 8 << 20]);
        let frame = frame_of(ApiKey::ApiVersions, 3, true, &body);
        let e = decode_request(ApiKey::ApiVersions, 3, &frame).expect_err("over the bound");
        assert!(format!("{e:#}").contains("budget"), "{e:#}");
    }

    /// A count that does fit decodes: the bound refuses only impossible claims.
    #[test]
    fn an_array_whose_count_fits_its_bytes_still_decodes() {
        // 2,048 empty topic names in exactly 4 KiB, then the timeout.
        let mut body = BytesMut::new();
        body.put_i32(2_048);
        body.put_slice(&[0u8; 4096]);
        body.put_i32(1000);
        let frame = frame_of(ApiKey::DeleteTopics, 3, false, &body);
        let (_, kind) = decode_request(ApiKey::DeleteTopics, 3, &frame).expect("decodes");
        let RequestKind::DeleteTopics(r) = kind else {
            panic!("not a DeleteTopics");
        };
        assert_eq!(r.topic_names.len(), 2_048);
        assert_eq!(r.timeout_ms, 1000);
    }

    /// A valid (CRC-correct) v2 batch around `records` whose header claims `count`.
    fn batch_claiming(records: &[u8], count: i32) -> bytes::Bytes {
        use crate::segment::batch::{BATCH_HEADER_LEN, LOG_OVERHEAD};
        let one = crate::segment::testing::encode_batch(0, 0, &[b""]);
        let mut b = one[..BATCH_HEADER_LEN].to_vec();
        let len = (BATCH_HEADER_LEN - LOG_OVERHEAD + records.len()) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        b.extend_from_slice(records);
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        bytes::Bytes::from(b)
    }

    #[test]
    fn a_batch_claiming_more_records_than_its_bytes_hold_is_refused() {
        use kafka_protocol::records::RecordBatchDecoder;
        // One real record (7 bytes: length, attributes, deltas, null key and value,
        // no headers) and a count of 2^31 - 1.
        let record = [12u8, 0, 0, 0, 1, 1, 0];
        let ok = batch_claiming(&record, 1);
        assert_eq!(
            RecordBatchDecoder::decode(&mut ok.clone())
                .unwrap()
                .records
                .len(),
            1
        );
        let lie = batch_claiming(&record, i32::MAX);
        let e = RecordBatchDecoder::decode(&mut lie.clone()).expect_err("count cannot fit");
        assert!(format!("{e:#}").contains("Array claims"), "{e:#}");
    }

    #[test]
    fn a_record_claiming_2_pow_30_headers_is_refused() {
        use kafka_protocol::records::RecordBatchDecoder;
        // attributes, timestamp delta, offset delta, null key, null value, then a
        // header count of 2^30 (zigzag varint 2^31).
        let mut rec = BytesMut::new();
        rec.put_slice(&[0, 0, 0, 1, 1]);
        put_uvarint(&mut rec, 1 << 31);
        let mut records = BytesMut::new();
        put_uvarint(&mut records, (rec.len() as u64) << 1);
        records.put_slice(&rec);
        let batch = batch_claiming(&records, 1);
        let e = RecordBatchDecoder::decode(&mut batch.clone()).expect_err("headers cannot fit");
        assert!(format!("{e:#}").contains("Array claims"), "{e:#}");
    }

    /// Found by fuzz/ (request_frame): a Fetch v11 frame whose array claims 2^31
    /// elements made kafka-protocol ask for a 134 GB allocation, which aborts the
    /// process. The vendored, patched crate refuses it as a malformed request.
    #[test]
    fn a_frame_claiming_a_huge_array_is_refused_without_allocating_it() {
        let input =
            include_bytes!("../../../fuzz/corpus/request_frame/regression-fetch-huge-array");
        let frame = bytes::Bytes::copy_from_slice(&input[4..]);
        let req = crate::net::connection::Request::from_frame(frame);
        let key = ApiKey::try_from(req.api_key).unwrap();
        assert!(is_served(key, req.api_version));
        assert!(decode_request(key, req.api_version, &req.frame).is_err());
    }
}
