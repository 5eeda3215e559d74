//! One client connection: framing, pipelined requests, responses in request order.
//!
//! The reader decodes frames and spawns a task per request, so requests to different
//! partitions (and shards) proceed concurrently; the writer awaits those tasks in arrival
//! order, which keeps Kafka's per-connection ordering. At most
//! `CONNECTION_INFLIGHT_MAX` requests are in flight before the reader stops reading.
//! A malformed frame closes only this connection, with a log line.
//!
//! Bounds against slow and hostile clients (each closes or pauses only this connection):
//! - memory: requests being handled plus responses not yet written are counted
//!   (`CONNECTION_BUFFERED_BYTES_MAX`); past it the reader stops reading, so a client
//!   that never reads its responses, or pipelines requests at the size limit, holds at
//!   most that plus one request and its response. A frame's buffer grows with the bytes
//!   that actually arrived, not with the size the client announced.
//! - broker memory: the same bytes count against the shard's share of
//!   `queued.max.request.bytes` (`net::memory`, with real response sizes); while it is
//!   spent the reader does not start another request.
//! - time: a frame that has started must arrive whole within `frame_read_timeout` (a
//!   slowloris dribble is cut off), and a connection idle for `CONNECTION_IDLE_MAX`
//!   (Kafka's connections.max.idle.ms) is closed.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::channel::oneshot;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::task::JoinHandle;

use crate::config::CONNECTION_INFLIGHT_MAX;
use crate::metrics::{self, ShardMetrics, Stage, StagedApi};
use crate::net::handlers::{self, Reply};
use crate::net::memory::MemoryBudget;
use crate::net::memory::Reservation;
use crate::shard::Shard;

/// Largest read issued to the socket between frames; several small requests arrive in
/// one read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Smallest read: an idle connection keeps a buffer this small (thousands of idle
/// connections must not pin 64 KiB each). Reads grow to `READ_CHUNK_BYTES` while they
/// come back full.
const READ_BYTES_MIN: usize = 4 * 1024;
/// A frame announced up to this size gets its whole buffer reserved at once (no
/// reallocation copies for ordinary produce requests); a larger one grows its buffer
/// as its bytes arrive, so an announced size costs nothing until it is sent.
const FRAME_RESERVE_BYTES_MAX: usize = 8 << 20;
/// Requests being handled plus responses not yet written, per connection, above which
/// the connection stops reading (see the module doc).
pub const CONNECTION_BUFFERED_BYTES_MAX: usize = 64 << 20;
/// What a response is assumed to take until it exists: a Fetch may return up to
/// `fetch.max.bytes`; anything else is small.
const RESPONSE_BYTES_ASSUMED: usize = 64 << 10;
/// A frame must arrive within this plus one second per MiB of its size.
const FRAME_READ_TIMEOUT_BASE: Duration = Duration::from_secs(10);
/// connections.max.idle.ms (Kafka's default): no request started for this long.
const CONNECTION_IDLE_MAX: Duration = Duration::from_secs(600);
/// api key + api version + correlation id: the header prefix common to every version.
const HEADER_PREFIX_LEN: usize = 8;

pub struct Request {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    /// The whole frame after the 4-byte size: header and body.
    pub frame: Bytes,
}

/// The size of the frame starting `buf` once its 4-byte size is there (`Ok(None)`
/// before). `Err(size)` for a size below the header prefix or above `max_frame`
/// (socket.request.max.bytes): the connection is closed.
pub fn frame_size(buf: &[u8], max_frame: usize) -> Result<Option<usize>, i32> {
    let Some(size) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([size[0], size[1], size[2], size[3]]);
    if len < HEADER_PREFIX_LEN as i32 || len as usize > max_frame {
        return Err(len);
    }
    Ok(Some(len as usize))
}

impl Request {
    /// `frame` is one whole frame after its size, at least `HEADER_PREFIX_LEN` bytes
    /// (`frame_size` checked it).
    pub fn from_frame(frame: Bytes) -> Request {
        assert!(
            frame.len() >= HEADER_PREFIX_LEN,
            "frame_size bounds the frame"
        );
        let mut prefix = &frame[..HEADER_PREFIX_LEN];
        Request {
            api_key: prefix.get_i16(),
            api_version: prefix.get_i16(),
            correlation_id: prefix.get_i32(),
            frame,
        }
    }
}

/// Per-connection count of buffered request and response bytes, with the reader's
/// wake-up when it falls back under the bound.
#[derive(Default)]
struct Budget {
    bytes: Cell<usize>,
    waiter: RefCell<Option<oneshot::Sender<()>>>,
    /// The writer has stopped: replies it did not write are never released, so the
    /// reader must not wait for room any more.
    closed: Cell<bool>,
}

impl Budget {
    fn add(&self, n: usize) {
        self.bytes.set(self.bytes.get() + n);
    }

    fn release(&self, n: usize) {
        self.bytes.set(self.bytes.get().saturating_sub(n));
        if self.bytes.get() <= CONNECTION_BUFFERED_BYTES_MAX {
            if let Some(w) = self.waiter.borrow_mut().take() {
                let _ = w.send(());
            }
        }
    }

    fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.waiter.borrow_mut().take() {
            let _ = w.send(());
        }
    }

    /// Waits until the buffered bytes are back under the bound (or the writer stopped).
    async fn wait_room(&self) {
        while self.bytes.get() > CONNECTION_BUFFERED_BYTES_MAX && !self.closed.get() {
            let (tx, rx) = oneshot::channel();
            *self.waiter.borrow_mut() = Some(tx);
            if rx.await.is_err() {
                return;
            }
        }
    }
}

/// Bytes a reply holds until written.
fn reply_bytes(reply: &Reply) -> usize {
    match reply {
        Reply::Frame(f) => f.len(),
        Reply::Chunks(c) => c.iter().map(|b| b.len()).sum(),
        Reply::Nothing | Reply::Close => 0,
    }
}

/// How long a frame of `len` bytes may take to arrive once it started.
fn frame_deadline(len: usize) -> Duration {
    FRAME_READ_TIMEOUT_BASE + Duration::from_secs((len >> 20) as u64)
}

/// Which requests a connection may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A client of the Kafka listener: every API this broker serves.
    Client,
    /// A follower's replica fetcher on the cluster listener: only what fetchers send.
    /// That listener must not be a second, unguarded door to the admin APIs.
    ReplicaFetcher,
}

impl Scope {
    fn allows(self, api_key: i16) -> bool {
        use kafka_protocol::messages::ApiKey;
        match self {
            Scope::Client => true,
            Scope::ReplicaFetcher => [
                ApiKey::ApiVersions,
                ApiKey::Fetch,
                ApiKey::OffsetForLeaderEpoch,
            ]
            .iter()
            .any(|k| *k as i16 == api_key),
        }
    }
}

/// Serves a client of the Kafka listener.
pub async fn handle(shard: Rc<Shard>, stream: TcpStream) {
    serve(shard, stream, Scope::Client).await
}

/// Serves a follower's replica fetcher on the cluster listener.
pub async fn handle_replica_fetcher(shard: Rc<Shard>, stream: TcpStream) {
    serve(shard, stream, Scope::ReplicaFetcher).await
}

async fn serve(shard: Rc<Shard>, stream: TcpStream, scope: Scope) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "set_nodelay failed");
    }
    ShardMetrics::add(&shard.metrics.connections, 1);
    let fd = stream.as_raw_fd();
    shard.sockets.borrow_mut().insert(fd);
    let (mut reader, mut writer) = stream.split();
    // A reply travels with its hold on the shard's memory budget, so a reply dropped
    // unwritten (closed connection) releases it too.
    let (tx, rx) = local_channel::new_bounded::<(i16, JoinHandle<(Reply, Reservation)>)>(
        CONNECTION_INFLIGHT_MAX,
    );
    let budget = Rc::new(Budget::default());
    let writer_shard = shard.clone();
    let writer_budget = budget.clone();
    let writer_task = glommio::spawn_local(async move {
        while let Some((api_key, handle)) = rx.recv().await {
            // A handler task that panicked leaves no response: the client would wait
            // forever, so the connection is closed instead.
            let (reply, _memory_held) = match handle.await {
                Some((reply, held)) => (Some(reply), Some(held)),
                None => (None, None),
            };
            let write_started = Instant::now();
            let held = reply.as_ref().map_or(0, reply_bytes);
            let written = match reply {
                Some(Reply::Frame(f)) => writer.write_all(&f).await.map(|_| f.len()),
                Some(Reply::Chunks(chunks)) => write_chunks(fd, &mut writer, &chunks).await,
                Some(Reply::Nothing) => Ok(0),
                Some(Reply::Close) | None => break,
            };
            writer_budget.release(held);
            match written {
                Ok(n) => ShardMetrics::add(&writer_shard.metrics.bytes_out, n as u64),
                Err(_) => break,
            }
            if let Some(api) = StagedApi::from_api_key(api_key) {
                metrics::record_stage(api, Stage::ResponseWrite, write_started.elapsed());
            }
        }
        writer_budget.close();
        // Out of the set before the fd can be closed and reused by another connection.
        writer_shard.sockets.borrow_mut().remove(&fd);
        let _ = writer.close().await;
    });

    let max_frame = shard.config.socket_request_max_bytes;
    let mut buf = BytesMut::with_capacity(READ_BYTES_MIN);
    let mut read_bytes = READ_BYTES_MIN;
    // When the frame being read started to arrive (None between frames).
    let mut frame_started: Option<Instant> = None;
    'conn: loop {
        // Fill until a whole frame is buffered.
        let frame_len = loop {
            let mut frame_rest = 0;
            let mut deadline = CONNECTION_IDLE_MAX;
            match frame_size(&buf, max_frame) {
                Err(size) => {
                    crate::warn_limited!(%peer, size, max = max_frame, "closing connection: frame size out of bounds (socket.request.max.bytes)");
                    break 'conn;
                }
                Ok(Some(len)) if buf.len() >= 4 + len => break len,
                Ok(Some(len)) => {
                    if len <= FRAME_RESERVE_BYTES_MAX {
                        buf.reserve(4 + len - buf.len());
                    }
                    frame_rest = 4 + len - buf.len();
                    deadline = frame_deadline(len);
                }
                Ok(None) if !buf.is_empty() => deadline = frame_deadline(0),
                Ok(None) => {}
            }
            if !buf.is_empty() && frame_started.is_none() {
                frame_started = Some(Instant::now());
            }
            let waited = frame_started.map_or(Duration::ZERO, |t| t.elapsed());
            let Some(left) = deadline.checked_sub(waited).filter(|d| !d.is_zero()) else {
                crate::warn_limited!(%peer, buffered = buf.len(), waited_ms = waited.as_millis() as u64, "closing connection: frame not received in time");
                break 'conn;
            };
            // Read at most what the current frame still needs (or one chunk), never
            // more than the buffer has grown to so far: the bytes handed to read() are
            // zeroed first, and a large announced frame must cost memory only as its
            // bytes arrive.
            let start = buf.len();
            let want = if frame_rest > 0 {
                frame_rest.min(start.max(read_bytes))
            } else {
                read_bytes
            };
            buf.resize(start + want, 0);
            let read =
                glommio::timer::timeout(left, async { Ok(reader.read(&mut buf[start..]).await) })
                    .await;
            let read = match read {
                Ok(r) => r,
                Err(_) => {
                    buf.truncate(start);
                    if start > 0 {
                        crate::warn_limited!(%peer, buffered = start, "closing connection: frame not received in time");
                    } else {
                        tracing::info!(%peer, "closing idle connection (connections.max.idle.ms)");
                    }
                    break 'conn;
                }
            };
            // Grow reads that come back full, shrink ones that come back mostly empty.
            if let Ok(n) = read {
                if n == want && frame_rest == 0 {
                    read_bytes = (read_bytes * 2).min(READ_CHUNK_BYTES);
                } else if n < want / 4 {
                    read_bytes = (read_bytes / 2).max(READ_BYTES_MIN);
                }
            }
            match read {
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
        frame_started = None;
        buf.advance(4);
        let frame = buf.split_to(frame_len).freeze();
        ShardMetrics::add(&shard.metrics.bytes_in, 4 + frame_len as u64);
        let request = Request::from_frame(frame);
        if !handlers::is_known_api(request.api_key) {
            crate::warn_limited!(%peer, api_key = request.api_key, "closing connection: unknown API key");
            break;
        }
        if !scope.allows(request.api_key) {
            crate::warn_limited!(%peer, api_key = request.api_key, ?scope, "closing connection: API not served on this listener");
            break;
        }
        let started = Instant::now();
        let shard2 = shard.clone();
        let api_key = request.api_key;
        // The request's bytes and its response's assumed size count until the response
        // exists; then its real size counts until written.
        let assumed = frame_len
            + if request.api_key == kafka_protocol::messages::ApiKey::Fetch as i16 {
                handlers::fetch::FETCH_RESPONSE_BYTES_MAX
            } else {
                RESPONSE_BYTES_ASSUMED
            };
        budget.add(assumed);
        let frame_held = MemoryBudget::of(&shard).hold(frame_len);
        let task_budget = budget.clone();
        let task = glommio::spawn_local(async move {
            if let Some(api) = StagedApi::from_api_key(api_key) {
                metrics::record_stage(api, Stage::QueueWait, started.elapsed());
            }
            let response = handlers::dispatch(&shard2, request).await;
            shard2
                .metrics
                .record_latency(api_key, started.elapsed().as_micros() as u64);
            task_budget.add(reply_bytes(&response));
            task_budget.release(assumed);
            let reply_held = MemoryBudget::of(&shard2).hold(reply_bytes(&response));
            drop(frame_held);
            (response, reply_held)
        })
        .detach();
        if tx.send((api_key, task)).await.is_err() {
            break;
        }
        // A client that does not read its responses (or pipelines huge requests) stops
        // being read here: TCP flow control pushes back on it.
        budget.wait_room().await;
        // Nor does any connection of a shard whose share of queued.max.request.bytes is
        // spent (the time paused is counted in the budget's metrics).
        MemoryBudget::of(&shard).wait_room().await;
        // A client pipelining many small requests must not hold the core.
        glommio::yield_if_needed().await;
        // Keep the buffer's spare room for the next reads instead of reallocating.
        if buf.capacity() < read_bytes {
            buf.reserve(read_bytes);
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
