//! ApiVersions (key 18), versions 0–3, with KIP-511's fallback for newer versions.

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

use super::SUPPORTED;
use crate::kafka_error as ec;

pub const MIN: i16 = 0;
pub const MAX: i16 = 3;

fn api_keys() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|(k, lo, hi)| {
            ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(*lo)
                .with_max_version(*hi)
        })
        .collect()
}

pub fn handle(_req: ApiVersionsRequest, _version: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ec::NONE)
        .with_api_keys(api_keys())
}

/// KIP-511: a client that sent a version we do not know gets a v0 response with
/// UNSUPPORTED_VERSION and our ranges, and retries with the highest version we list.
/// Encoded by hand at v0 (header v0), whatever version was asked.
pub fn unsupported_version_response(correlation_id: i32) -> super::Reply {
    let keys = api_keys();
    let mut out = BytesMut::with_capacity(16 + keys.len() * 6);
    out.put_i32(0);
    out.put_i32(correlation_id);
    out.put_i16(ec::UNSUPPORTED_VERSION);
    out.put_i32(keys.len() as i32);
    for k in &keys {
        out.put_i16(k.api_key);
        out.put_i16(k.min_version);
        out.put_i16(k.max_version);
    }
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    super::Reply::Frame(out)
}
