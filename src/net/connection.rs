//! One client connection: framing, pipelined requests, responses in request order.
//!
//! The reader decodes frames and spawns a task per request, so requests to different
//! partitions (and shards) proceed concurrently; the writer awaits those tasks in arrival
//! order, which keeps Kafka's per-connection ordering. At most
//! `CONNECTION_INFLIGHT_MAX` requests are in flight before the reader stops reading.
//! A malformed frame closes only this connection, with a log line.

use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::task::JoinHandle;

use crate::config::CONNECTION_INFLIGHT_MAX;
use crate::net::handlers::{self, Reply};
use crate::net::metrics::{self, ShardMetrics, Stage, StagedApi};
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
    let fd = stream.as_raw_fd();
    let (mut reader, mut writer) = stream.split();
    let (tx, rx) = local_channel::new_bounded::<(i16, JoinHandle<Reply>)>(CONNECTION_INFLIGHT_MAX);
    let writer_shard = shard.clone();
    let writer_task = glommio::spawn_local(async move {
        while let Some((api_key, handle)) = rx.recv().await {
            // A handler task that panicked leaves no response: the client would wait
            // forever, so the connection is closed instead.
            let reply = handle.await;
            let write_started = Instant::now();
            let written = match reply {
                Some(Reply::Frame(f)) => writer.write_all(&f).await.map(|_| f.len()),
                Some(Reply::Chunks(chunks)) => write_chunks(fd, &mut writer, &chunks).await,
                Some(Reply::Nothing) => continue,
                Some(Reply::Close) | None => break,
            };
            match written {
                Ok(n) => ShardMetrics::add(&writer_shard.metrics.bytes_out, n as u64),
                Err(_) => break,
            }
            if let Some(api) = StagedApi::from_api_key(api_key) {
                metrics::record_stage(api, Stage::ResponseWrite, write_started.elapsed());
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
            // Read at most what the current frame still needs (or one chunk): the bytes
            // handed to read() are zeroed first, so never hand it the whole spare room.
            let start = buf.len();
            let frame_rest = if start >= 4 {
                4 + i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize - start
            } else {
                0
            };
            let want = frame_rest.max(READ_CHUNK_BYTES);
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
        let api_key = request.api_key;
        let task = glommio::spawn_local(async move {
            if let Some(api) = StagedApi::from_api_key(api_key) {
                metrics::record_stage(api, Stage::QueueWait, started.elapsed());
            }
            let response = handlers::dispatch(&shard2, request).await;
            shard2
                .metrics
                .record_latency(api_key, started.elapsed().as_micros() as u64);
            response
        })
        .detach();
        if tx.send((api_key, task)).await.is_err() {
            break;
        }
        // A client pipelining many small requests must not hold the core.
        glommio::yield_if_needed().await;
        // Keep the buffer's spare room for the next reads instead of reallocating.
        if buf.capacity() < READ_CHUNK_BYTES {
            buf.reserve(READ_CHUNK_BYTES);
        }
    }
    drop(tx);
    writer_task.await;
    let open = &shard.metrics.connections;
    open.set(open.get().saturating_sub(1));
}

/// Most buffers handed to one sendmsg (Linux's UIO_MAXIOV).
const IOVECS_MAX: usize = 1024;

/// Writes `chunks` back to back. glommio's socket writes take one buffer at a time, so
/// a non-blocking vectored `sendmsg` on the socket's fd sends as many buffers as the
/// socket takes in one system call; whatever it does not take is written through
/// glommio, which waits for room without blocking the shard.
async fn write_chunks<W: futures::io::AsyncWrite + Unpin>(
    fd: RawFd,
    writer: &mut W,
    chunks: &[Bytes],
) -> std::io::Result<usize> {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let (mut index, mut offset) = (0usize, 0usize);
    while index < chunks.len() {
        let iov: Vec<libc::iovec> = chunks[index..]
            .iter()
            .take(IOVECS_MAX)
            .enumerate()
            .map(|(i, c)| {
                let skip = if i == 0 { offset } else { 0 };
                libc::iovec {
                    iov_base: c[skip..].as_ptr() as *mut libc::c_void,
                    iov_len: c.len() - skip,
                }
            })
            .collect();
        // SAFETY: the iovecs point into `chunks`, which outlive the call; msghdr is
        // zeroed except for the iovec array.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = iov.len();
            libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        let mut sent = if sent >= 0 {
            sent as usize
        } else {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(err);
            }
            // Socket full: let glommio wait for room and send the current buffer's rest.
            writer.write_all(&chunks[index][offset..]).await?;
            chunks[index].len() - offset
        };
        while sent > 0 {
            let left = chunks[index].len() - offset;
            if sent >= left {
                sent -= left;
                index += 1;
                offset = 0;
            } else {
                offset += sent;
                sent = 0;
            }
        }
        while index < chunks.len() && chunks[index].len() == offset {
            index += 1;
            offset = 0;
        }
    }
    Ok(total)
}
