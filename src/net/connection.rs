//! One client connection: framing, pipelined requests, responses in request order.
//!
//! The reader decodes frames and spawns a task per request, so requests to different
//! partitions (and shards) proceed concurrently; the writer awaits those tasks in arrival
//! order, which keeps Kafka's per-connection ordering. At most
//! `CONNECTION_INFLIGHT_MAX` requests are in flight before the reader stops reading.
//! A malformed frame closes only this connection, with a log line.

use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::task::JoinHandle;

use crate::config::CONNECTION_INFLIGHT_MAX;
use crate::net::handlers::{self, Reply};
use crate::net::metrics::ShardMetrics;
use crate::shard::Shard;

/// Smallest read issued to the socket; several small requests arrive in one read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// api key + api version + correlation id: the header prefix common to every version.
const HEADER_PREFIX_LEN: usize = 8;

pub struct Request {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    /// The whole frame after the 4-byte size: header and body.
    pub frame: Bytes,
}

pub async fn handle(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "set_nodelay failed");
    }
    ShardMetrics::add(&shard.metrics.connections, 1);
    let (mut reader, mut writer) = stream.split();
    let (tx, rx) = local_channel::new_bounded::<JoinHandle<Reply>>(CONNECTION_INFLIGHT_MAX);
    let writer_shard = shard.clone();
    let writer_task = glommio::spawn_local(async move {
        while let Some(handle) = rx.recv().await {
            // A handler task that panicked leaves no response: the client would wait
            // forever, so the connection is closed instead.
            let response = match handle.await {
                Some(Reply::Frame(f)) => f,
                Some(Reply::Nothing) => continue,
                Some(Reply::Close) | None => break,
            };
            ShardMetrics::add(&writer_shard.metrics.bytes_out, response.len() as u64);
            if writer.write_all(&response).await.is_err() {
                break;
            }
        }
        let _ = writer.close().await;
    });

    let max_frame = shard.config.socket_request_max_bytes;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    'conn: loop {
        // Fill until a whole frame is buffered.
        let frame_len = loop {
            if buf.len() >= 4 {
                let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                if len < HEADER_PREFIX_LEN as i32 || len as usize > max_frame {
                    tracing::warn!(%peer, size = len, max = max_frame, "closing connection: frame size out of bounds (socket.request.max.bytes)");
                    break 'conn;
                }
                let len = len as usize;
                if buf.len() >= 4 + len {
                    break len;
                }
                buf.reserve(4 + len - buf.len());
            }
            let start = buf.len();
            let want = (buf.capacity() - start).max(READ_CHUNK_BYTES);
            buf.resize(start + want, 0);
            match reader.read(&mut buf[start..]).await {
                Ok(0) => {
                    buf.truncate(start);
                    if start > 0 {
                        tracing::info!(%peer, buffered = start, "connection closed mid-frame");
                    }
                    break 'conn;
                }
                Ok(n) => buf.truncate(start + n),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "read failed");
                    break 'conn;
                }
            }
        };
        buf.advance(4);
        let frame = buf.split_to(frame_len).freeze();
        ShardMetrics::add(&shard.metrics.bytes_in, 4 + frame_len as u64);
        let mut prefix = &frame[..HEADER_PREFIX_LEN];
        let request = Request {
            api_key: prefix.get_i16(),
            api_version: prefix.get_i16(),
            correlation_id: prefix.get_i32(),
            frame,
        };
        if !handlers::is_known_api(request.api_key) {
            tracing::warn!(%peer, api_key = request.api_key, "closing connection: unknown API key");
            break;
        }
        let started = Instant::now();
        let shard2 = shard.clone();
        let task = glommio::spawn_local(async move {
            let api_key = request.api_key;
            let response = handlers::dispatch(&shard2, request).await;
            shard2
                .metrics
                .record_latency(api_key, started.elapsed().as_micros() as u64);
            response
        })
        .detach();
        if tx.send(task).await.is_err() {
            break;
        }
        // Keep the buffer's spare room for the next reads instead of reallocating.
        if buf.capacity() < READ_CHUNK_BYTES {
            buf.reserve(READ_CHUNK_BYTES);
        }
    }
    drop(tx);
    writer_task.await;
    ShardMetrics::add(&shard.metrics.connections, u64::MAX); // -1, wrapping
}
