//! Fetch responses written as a list of buffers: the protocol fields are encoded into
//! small buffers and the record batches go between them as the very `Bytes` the log
//! returned, so no record byte is copied in user space on the way to the socket. (The
//! protocol crate's encoder would copy every record into one buffer.) Versions 4–16.

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

pub struct PartOut {
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub chunks: Vec<Bytes>,
}

pub struct TopicOut {
    pub name: String,
    pub id: Uuid,
    pub parts: Vec<PartOut>,
}

fn put_uvarint(b: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

/// Encodes a whole response frame (size, header, body) as buffers to write in order.
pub fn encode(
    correlation_id: i32,
    version: i16,
    error_code: i16,
    session_id: i32,
    topics: &[TopicOut],
) -> Vec<Bytes> {
    debug_assert!((4..=16).contains(&version));
    let flexible = version >= 12;
    let mut out: Vec<Bytes> = Vec::new();
    let mut cur = BytesMut::with_capacity(256);
    cur.put_i32(0); // size, patched below
    cur.put_i32(correlation_id);
    if flexible {
        put_uvarint(&mut cur, 0); // response header tagged fields
    }
    cur.put_i32(0); // throttle_time_ms
    if version >= 7 {
        cur.put_i16(error_code);
        cur.put_i32(session_id);
    }
    let array_len = |b: &mut BytesMut, n: usize| {
        if flexible {
            put_uvarint(b, n as u32 + 1)
        } else {
            b.put_i32(n as i32)
        }
    };
    array_len(&mut cur, topics.len());
    for t in topics {
        if version >= 13 {
            cur.put_slice(t.id.as_bytes());
        } else if flexible {
            put_uvarint(&mut cur, t.name.len() as u32 + 1);
            cur.put_slice(t.name.as_bytes());
        } else {
            cur.put_i16(t.name.len() as i16);
            cur.put_slice(t.name.as_bytes());
        }
        array_len(&mut cur, t.parts.len());
        for p in &t.parts {
            cur.put_i32(p.partition);
            cur.put_i16(p.error_code);
            cur.put_i64(p.high_watermark);
            cur.put_i64(p.high_watermark); // last_stable_offset: no transactions yet
            if version >= 5 {
                cur.put_i64(p.log_start_offset);
            }
            array_len(&mut cur, 0); // aborted_transactions: none
            if version >= 11 {
                cur.put_i32(-1); // preferred_read_replica
            }
            let records_len: usize = p.chunks.iter().map(|c| c.len()).sum();
            if flexible {
                put_uvarint(&mut cur, records_len as u32 + 1);
            } else {
                cur.put_i32(records_len as i32);
            }
            if records_len > 0 {
                out.push(cur.split().freeze());
                out.extend(p.chunks.iter().cloned());
            }
            if flexible {
                put_uvarint(&mut cur, 0); // partition tagged fields
            }
        }
        if flexible {
            put_uvarint(&mut cur, 0); // topic tagged fields
        }
    }
    if flexible {
        put_uvarint(&mut cur, 0); // top-level tagged fields
    }
    out.push(cur.freeze());
    let total: usize = out.iter().map(|b| b.len()).sum();
    // The size prefix sits in the first buffer, which this function created and still
    // owns uniquely, so it can be patched in place.
    let first = std::mem::take(&mut out[0]);
    let mut first = BytesMut::from(first);
    first[..4].copy_from_slice(&((total - 4) as i32).to_be_bytes());
    out[0] = first.freeze();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{FetchResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;

    /// Our encoding must decode, with the protocol crate's decoder, to what we meant, at
    /// every version we advertise (the Kafka protocol guide's Fetch response schemas).
    #[test]
    fn every_version_decodes_with_the_reference_decoder() {
        let records_a = Bytes::from_static(b"0123456789");
        let records_b = Bytes::from_static(b"abcdef");
        let topics = vec![
            TopicOut {
                name: "orders".into(),
                id: Uuid::from_u128(0xfeed),
                parts: vec![
                    PartOut {
                        partition: 0,
                        error_code: 0,
                        high_watermark: 42,
                        log_start_offset: 3,
                        chunks: vec![records_a.clone(), records_b.clone()],
                    },
                    PartOut {
                        partition: 1,
                        error_code: 1,
                        high_watermark: 7,
                        log_start_offset: 0,
                        chunks: vec![],
                    },
                ],
            },
            TopicOut {
                name: "x".into(),
                id: Uuid::from_u128(9),
                parts: vec![],
            },
        ];
        for version in 4..=16i16 {
            let bufs = encode(77, version, 0, 5, &topics);
            let mut all = BytesMut::new();
            for b in &bufs {
                all.extend_from_slice(b);
            }
            let mut frame = all.freeze();
            let size = i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(size, frame.len() - 4, "v{version} size prefix");
            let _ = bytes::Buf::advance(&mut frame, 4);
            let header_version = if version >= 12 { 1 } else { 0 };
            let header = ResponseHeader::decode(&mut frame, header_version).unwrap();
            assert_eq!(header.correlation_id, 77);
            let resp = FetchResponse::decode(&mut frame, version).unwrap();
            if version >= 7 {
                assert_eq!(resp.session_id, 5);
            }
            assert_eq!(frame.len(), 0, "v{version}: trailing bytes");
            assert_eq!(resp.responses.len(), 2);
            let t = &resp.responses[0];
            if version >= 13 {
                assert_eq!(t.topic_id, Uuid::from_u128(0xfeed));
            } else {
                assert_eq!(t.topic.0.as_str(), "orders");
            }
            assert_eq!(t.partitions[0].high_watermark, 42);
            assert_eq!(
                t.partitions[0].records.as_deref(),
                Some(&b"0123456789abcdef"[..])
            );
            assert_eq!(t.partitions[1].error_code, 1);
            assert_eq!(t.partitions[1].records.as_deref(), Some(&b""[..]));
            if version >= 5 {
                assert_eq!(t.partitions[0].log_start_offset, 3);
            }
        }
    }
}
