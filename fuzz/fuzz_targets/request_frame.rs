//! The request path of a connection: a byte stream cut into frames (`frame_size`), each
//! frame's fixed prefix read (`Request::from_frame`), and a served API's header and
//! body decoded (`decode_request`) exactly as `connection.rs` and `handlers::dispatch`
//! do. Any panic (even one `decode_request` would contain) is a finding.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use libfuzzer_sys::fuzz_target;
use runnel::net::connection::{frame_size, Request};
use runnel::net::handlers::{decode_request, is_served};

/// socket.request.max.bytes for the fuzz run: larger than any input.
const FRAME_BYTES_MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut rest = Bytes::copy_from_slice(data);
    while let Ok(Some(len)) = frame_size(&rest, FRAME_BYTES_MAX) {
        assert!((8..=FRAME_BYTES_MAX).contains(&len), "frame_size bounds");
        if rest.len() < 4 + len {
            return; // the connection would wait for more bytes
        }
        let req = Request::from_frame(rest.slice(4..4 + len));
        rest = rest.slice(4 + len..);
        let Ok(key) = ApiKey::try_from(req.api_key) else {
            return; // unknown API: the connection closes
        };
        if is_served(key, req.api_version) {
            if let Ok((header, _)) = decode_request(key, req.api_version, &req.frame) {
                assert_eq!(header.correlation_id, req.correlation_id);
                assert_eq!(header.request_api_key, req.api_key);
            }
        }
    }
});
