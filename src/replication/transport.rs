//! Inter-broker frames over TCP on the cluster listener (shard 0 of each broker).
//!
//! A frame is `[u32 len][u8 kind][payload]` (`len` counts kind + payload). Each broker
//! keeps one outbound connection per peer, written by one task from a bounded queue
//! and opened with a hello naming the sender (node id and process incarnation);
//! a full queue or a dead peer drops frames, which Raft tolerates (it resends) and a
//! forwarded proposal notices by its timeout. Replies to forwarded proposals come back
//! on the connection their request went out on.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;

pub const KIND_RAFT: u8 = 1;
pub const KIND_FORWARD: u8 = 2;
pub const KIND_FORWARD_REPLY: u8 = 3;
/// First frame of a replica fetcher's connection: the rest of it is the Kafka protocol
/// (`replication::fetcher`), served like a client connection.
pub const KIND_KAFKA: u8 = 4;
/// First frame of a peer link: the sender's node id (i32) and process incarnation
/// (u64), so the receiver can tell which process of a node id it hears from (a live
/// one from a restarted one's predecessor, or from a second process with that id).
pub const KIND_HELLO: u8 = 5;
pub const HELLO_BYTES: usize = 12;

pub fn hello(node: i32, incarnation: u64) -> Bytes {
    let mut payload = [0u8; HELLO_BYTES];
    payload[..4].copy_from_slice(&node.to_be_bytes());
    payload[4..].copy_from_slice(&incarnation.to_be_bytes());
    frame(KIND_HELLO, &payload)
}

/// (node id, incarnation) of a `KIND_HELLO` payload.
pub fn parse_hello(payload: &[u8]) -> Option<(i32, u64)> {
    if payload.len() != HELLO_BYTES {
        return None;
    }
    Some((
        i32::from_be_bytes(payload[..4].try_into().ok()?),
        u64::from_be_bytes(payload[4..].try_into().ok()?),
    ))
}

/// Frames queued per peer before new ones are dropped.
pub const PEER_QUEUE_FRAMES_MAX: usize = 1024;
/// A larger frame means a corrupt stream (or a hostile peer): the connection is closed.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Pause between connection attempts to a peer that is down.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

pub fn frame(kind: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u32(1 + payload.len() as u32);
    out.put_u8(kind);
    out.put_slice(payload);
    out.freeze()
}

/// Reads one frame; `None` on EOF, error or an out-of-bounds length.
pub async fn read_frame<R: futures::io::AsyncRead + Unpin>(r: &mut R) -> Option<(u8, Bytes)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes(head[0..4].try_into().unwrap()) as usize;
    if len == 0 || len > FRAME_BYTES_MAX {
        tracing::warn!(len, "cluster link: frame length out of bounds; closing");
        return None;
    }
    // The buffer grows with the bytes that arrive: a peer that announces 64 MiB and
    // sends nothing costs nothing.
    let mut body = Vec::new();
    r.take((len - 1) as u64).read_to_end(&mut body).await.ok()?;
    if body.len() != len - 1 {
        return None;
    }
    Some((head[4], Bytes::from(body)))
}

/// The sending side of one peer link.
pub struct PeerLink {
    pub id: i32,
    pub addr: SocketAddr,
    tx: LocalSender<Bytes>,
}

impl PeerLink {
    /// Starts the task that connects to `addr`, opens each connection with `hello` and
    /// writes queued frames; frames that come back on the connection go to `on_frame`.
    pub fn start(
        id: i32,
        addr: SocketAddr,
        hello: Bytes,
        on_frame: Rc<dyn Fn(u8, Bytes)>,
    ) -> PeerLink {
        let (tx, rx) = local_channel::new_bounded(PEER_QUEUE_FRAMES_MAX);
        glommio::spawn_local(run(id, addr, hello, rx, on_frame)).detach();
        PeerLink { id, addr, tx }
    }

    /// Queues a frame; false when the queue is full (the frame is dropped).
    pub fn send(&self, frame: Bytes) -> bool {
        self.tx.try_send(frame).is_ok()
    }
}

async fn run(
    id: i32,
    addr: SocketAddr,
    hello: Bytes,
    rx: LocalReceiver<Bytes>,
    on_frame: Rc<dyn Fn(u8, Bytes)>,
) {
    let mut down_logged = false;
    loop {
        // Wait for something to send before connecting, so an idle link costs nothing.
        let Some(first) = rx.recv().await else { return };
        let stream = match TcpStream::connect_timeout(addr, Duration::from_secs(1)).await {
            Ok(s) => s,
            Err(e) => {
                if !down_logged {
                    tracing::info!(peer = id, %addr, error = %e, "cluster peer unreachable; retrying");
                    down_logged = true;
                }
                // Whatever queued up meanwhile is stale: Raft will send fresh messages.
                while let Some(Some(_)) = futures::FutureExt::now_or_never(rx.recv()) {}
                glommio::timer::sleep(RECONNECT_BACKOFF).await;
                continue;
            }
        };
        if down_logged {
            tracing::info!(peer = id, %addr, "cluster peer reachable");
            down_logged = false;
        }
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.split();
        let on = on_frame.clone();
        let reader_task = glommio::spawn_local(async move {
            while let Some((kind, payload)) = read_frame(&mut reader).await {
                on(kind, payload);
            }
        });
        let mut next = Some(first);
        if writer.write_all(&hello).await.is_err() {
            next = None;
        }
        while let Some(f) = next.take() {
            if writer.write_all(&f).await.is_err() {
                break;
            }
            next = rx.recv().await;
        }
        drop(reader_task);
        let _ = writer.close().await;
    }
}
