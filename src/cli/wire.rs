//! A blocking one-request-at-a-time Kafka client for the calls rdkafka 0.39 gets wrong:
//! its DescribeConfigs and AlterConfigs results drop the per-resource error, so an
//! unknown topic or an invalid value would look like success. Plaintext only.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

use super::{CliError, CliResult, ClientArgs};

/// Largest response accepted; config responses are a few KiB.
const RESPONSE_BYTES_MAX: usize = 16 << 20;

/// Sends `req` at `version` to the first bootstrap server that accepts a connection
/// and decodes the response.
pub fn call<R: Request>(args: &ClientArgs, req: &R, version: i16) -> CliResult<R::Response> {
    let deadline = Instant::now() + args.timeout();
    let mut last_error = String::from("no bootstrap server");
    for server in args.bootstrap_server.split(',').map(str::trim) {
        let addrs = match server.to_socket_addrs() {
            Ok(a) => a,
            Err(e) => {
                last_error = format!("{server}: {e}");
                continue;
            }
        };
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => return exchange(stream, req, version, deadline),
                Err(e) => last_error = format!("{addr}: {e}"),
            }
        }
    }
    Err(CliError::error(format!(
        "cannot reach a broker at {}: {last_error}",
        args.bootstrap_server
    )))
}

fn exchange<R: Request>(
    mut stream: TcpStream,
    req: &R,
    version: i16,
    deadline: Instant,
) -> CliResult<R::Response> {
    let io = |e: std::io::Error| CliError::error(format!("talking to the broker: {e}"));
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(std::time::Duration::from_millis(1));
    stream.set_read_timeout(Some(left)).map_err(io)?;
    stream.set_write_timeout(Some(left)).map_err(io)?;
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("runnel-cli")));
    let mut body = BytesMut::new();
    let encode = |e: anyhow::Error| CliError::error(format!("encoding request: {e}"));
    header
        .encode(&mut body, R::header_version(version))
        .map_err(encode)?;
    req.encode(&mut body, version).map_err(encode)?;
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(body.len() as i32);
    frame.put_slice(&body);
    stream.write_all(&frame).map_err(io)?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(io)?;
    let len = i32::from_be_bytes(len);
    if len < 0 || len as usize > RESPONSE_BYTES_MAX {
        return Err(CliError::error(format!(
            "response length {len} out of range"
        )));
    }
    // Grows with the bytes that arrive, not with the announced length.
    let mut buf = Vec::new();
    (&mut stream)
        .take(len as u64)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() != len as usize {
        return Err(CliError::error(format!(
            "response ended after {} of {len} bytes",
            buf.len()
        )));
    }
    let mut buf = Bytes::from(buf);
    let decode = |e: anyhow::Error| CliError::error(format!("decoding response: {e}"));
    let api = ApiKey::try_from(R::KEY).map_err(|_| CliError::error("unknown api key"))?;
    let header =
        ResponseHeader::decode(&mut buf, api.response_header_version(version)).map_err(decode)?;
    if header.correlation_id != 1 {
        return Err(CliError::error("response to another request"));
    }
    let resp = R::Response::decode(&mut buf, version).map_err(decode)?;
    debug_assert_eq!(buf.remaining(), 0);
    Ok(resp)
}

/// A Kafka error code as a CLI error: unknown topic is NOT_FOUND.
pub fn check(code: i16, message: Option<&StrBytes>, context: &str) -> CliResult {
    let Some(e) = ResponseError::try_from_code(code) else {
        return Ok(());
    };
    let text = match message {
        Some(m) if !m.is_empty() => format!("{context}: {e}: {}", m.as_str()),
        _ => format!("{context}: {e}"),
    };
    if e == ResponseError::UnknownTopicOrPartition {
        Err(CliError::not_found(text))
    } else {
        Err(CliError::error(text))
    }
}
