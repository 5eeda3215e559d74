//! The follower side of partition replication (Kafka's replica fetcher).
//!
//! One task per (shard, leader broker) fetches every partition this shard follows
//! from that leader in one long-polling Fetch (`replica_id` = this broker), appends
//! the batches exactly as received, fdatasyncs them, and only then asks for the next
//! offset: a follower's fetch offset is its durable log end, which is what the leader's
//! high watermark counts. The connection goes to the leader's cluster address (its
//! entry in `controller.quorum.voters`), opened with one `KIND_KAFKA` hello frame, after
//! which it speaks the Kafka protocol; so replication traffic between two brokers can
//! be cut (by a test's proxy) like the Raft traffic.
//!
//! Before fetching for a new leader or leader epoch, a partition truncates a tail the
//! leader may not have (OffsetForLeaderEpoch; see `truncate`).
//!
//! Every pass of a fetcher's loop either awaits I/O or a timer, or idles until it is
//! woken (`Fetcher::idle`): a glommio task that loops without yielding starves its
//! whole shard (Raft on shard 0, the signal poll), so no path may `continue` without
//! one. A fetcher with no partitions left ends.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::channel::oneshot;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

use super::transport::{self, KIND_KAFKA};
use crate::kafka_error as ec;
use crate::shard::{Partition, Shard};
use crate::time::with_timeout;

/// Fetch v12: topic names, flexible encoding, `replica_id` as a field.
const FETCH_VERSION: i16 = 12;
/// How long the leader may hold a fetch with nothing new: an idle cluster sends two
/// small requests a second per broker pair and shard.
const FETCH_MAX_WAIT_MS: i32 = 500;
const FETCH_MAX_BYTES: i32 = 16 << 20;
const PARTITION_MAX_BYTES: i32 = 4 << 20;
/// A response must arrive within the long poll plus this.
const RESPONSE_GRACE: Duration = Duration::from_secs(10);
/// Largest response frame accepted (the leader caps responses at fetch.max.bytes).
const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// Pause before reconnecting to a leader that cannot be reached.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);
/// Pause before fetching a partition again after the leader refused it (not leader
/// yet, epoch not known yet): the metadata will say what changed.
const PARTITION_BACKOFF: Duration = Duration::from_millis(300);
/// Longest idle wait with nothing to fetch; a change to the followed set wakes it sooner.
const IDLE_WAIT_MAX: Duration = Duration::from_secs(1);

type Key = (String, i32);

#[derive(Clone, Debug)]
struct Followed {
    epoch: i32,
    /// The divergent tail, if any, is gone: fetching may start.
    truncated: bool,
    retry_at: Option<Instant>,
}

struct Fetcher {
    leader: i32,
    parts: RefCell<BTreeMap<Key, Followed>>,
    /// Wakes the task when it idles with nothing to fetch.
    wake: RefCell<Option<oneshot::Sender<()>>>,
    /// The followed set changed since the task last idled: a wake that came while the
    /// task was busy is not lost.
    woken: Cell<bool>,
}

impl Fetcher {
    fn wake(&self) {
        self.woken.set(true);
        if let Some(tx) = self.wake.borrow_mut().take() {
            let _ = tx.send(());
        }
    }

    /// Waits until the followed set changes or `wait` passes; returns at once if it
    /// changed since the last call.
    async fn idle(&self, wait: Duration) {
        if self.woken.replace(false) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        *self.wake.borrow_mut() = Some(tx);
        let _ = with_timeout(wait, rx).await;
        self.wake.borrow_mut().take();
        self.woken.set(false);
    }

    /// How long to idle: until the earliest retry, at most `IDLE_WAIT_MAX`.
    fn idle_wait(&self, now: Instant) -> Duration {
        self.parts
            .borrow()
            .values()
            .filter_map(|s| s.retry_at)
            .min()
            .map_or(IDLE_WAIT_MAX, |t| {
                t.saturating_duration_since(now).min(IDLE_WAIT_MAX)
            })
    }
}

thread_local! {
    /// This shard's fetchers by leader id.
    static FETCHERS: RefCell<HashMap<i32, Rc<Fetcher>>> = RefCell::default();
    /// Fetcher tasks of this shard still running.
    static RUNNING: Cell<usize> = const { Cell::new(0) };
    /// Set by `stop_all` (the broker is stopping): nothing is followed any more.
    static STOPPED: Cell<bool> = const { Cell::new(false) };
}

/// Counts a running fetcher task while alive.
struct Running;

impl Running {
    fn start() -> Running {
        RUNNING.with(|r| r.set(r.get() + 1));
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(r.get() - 1));
    }
}

/// The broker is stopping: this shard's fetchers stop (no new ones start) and this
/// waits, at most `max`, until none is running, so no replicated append or truncation
/// races the logs being closed. Returns whether they all ended.
pub async fn stop_all(max: Duration) -> bool {
    STOPPED.with(|s| s.set(true));
    let fetchers = FETCHERS.with(|m| std::mem::take(&mut *m.borrow_mut()));
    for f in fetchers.values() {
        // A fetch in flight finds nothing followed when its answer comes.
        f.parts.borrow_mut().clear();
        f.wake();
    }
    let deadline = Instant::now() + max;
    while RUNNING.with(Cell::get) > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    RUNNING.with(Cell::get) == 0
}

/// Starts following `topic`-`partition` from `leader` at `epoch` (it truncates first),
/// and stops following it from any other leader. Runs on the partition's owner shard.
pub fn follow(shard: &Rc<Shard>, topic: &str, partition: i32, leader: i32, epoch: i32) {
    if STOPPED.with(Cell::get) {
        return;
    }
    let key = (topic.to_string(), partition);
    remove_from_others(&key, Some(leader));
    let followed = Followed {
        epoch,
        truncated: false,
        retry_at: None,
    };
    if let Some(f) = FETCHERS.with(|m| m.borrow().get(&leader).cloned()) {
        f.parts.borrow_mut().insert(key, followed);
        f.wake();
        return;
    }
    let f = Rc::new(Fetcher {
        leader,
        parts: RefCell::new(BTreeMap::from([(key, followed)])),
        wake: RefCell::default(),
        woken: Cell::new(false),
    });
    FETCHERS.with(|m| m.borrow_mut().insert(leader, f.clone()));
    // glommio runs a spawned task at once, up to its first await: it must find itself
    // registered and with its partition (a fetcher with none ends). No borrow is held.
    glommio::spawn_local(run(shard.clone(), f)).detach();
}

/// Stops following `topic`-`partition` (it leads now, is offline, or is gone).
pub fn unfollow(topic: &str, partition: i32) {
    remove_from_others(&(topic.to_string(), partition), None);
}

fn remove_from_others(key: &Key, keep: Option<i32>) {
    let fetchers: Vec<Rc<Fetcher>> =
        FETCHERS.with(|m| m.borrow().values().cloned().collect::<Vec<_>>());
    for f in fetchers {
        if Some(f.leader) == keep {
            continue;
        }
        let now_empty = {
            let mut parts = f.parts.borrow_mut();
            parts.remove(key);
            parts.is_empty()
        };
        if now_empty {
            // The task sees it is no longer registered and ends.
            FETCHERS.with(|m| m.borrow_mut().remove(&f.leader));
            f.wake();
        }
    }
}

fn is_registered(f: &Rc<Fetcher>) -> bool {
    FETCHERS.with(|m| m.borrow().get(&f.leader).is_some_and(|x| Rc::ptr_eq(x, f)))
}

/// The followed state of `key` if it is still followed from this fetcher at `epoch`.
fn still_followed(f: &Fetcher, key: &Key, epoch: i32) -> bool {
    f.parts.borrow().get(key).is_some_and(|s| s.epoch == epoch)
}

fn set_state(f: &Fetcher, key: &Key, epoch: i32, update: impl FnOnce(&mut Followed)) {
    if let Some(s) = f.parts.borrow_mut().get_mut(key) {
        if s.epoch == epoch {
            update(s);
        }
    }
}

async fn run(shard: Rc<Shard>, f: Rc<Fetcher>) {
    let _running = Running::start();
    let addr: Option<SocketAddr> = shard
        .config
        .cluster
        .as_ref()
        .and_then(|c| c.voters.iter().find(|v| v.id == f.leader).map(|v| v.addr));
    let Some(addr) = addr else {
        tracing::error!(
            leader = f.leader,
            "partition leader is not in controller.quorum.voters; cannot follow it"
        );
        return;
    };
    let mut conn: Option<Conn> = None;
    let mut down_logged = false;
    loop {
        if !is_registered(&f) {
            return;
        }
        if f.parts.borrow().is_empty() {
            // Nothing left to follow from this leader: end (a later `follow` starts a
            // new task).
            FETCHERS.with(|m| m.borrow_mut().remove(&f.leader));
            return;
        }
        let now = Instant::now();
        // A followed partition with no log on this shard is being deleted (its unfollow
        // is on the way): it waits like a refused one, so a fetcher left with only
        // such partitions idles instead of going round with nothing to send.
        let missing: Vec<(Key, i32)> = f
            .parts
            .borrow()
            .iter()
            .filter(|(k, s)| {
                s.retry_at.is_none_or(|t| t <= now) && shard.partition(&k.0, k.1).is_none()
            })
            .map(|(k, s)| (k.clone(), s.epoch))
            .collect();
        for (key, epoch) in &missing {
            set_state(&f, key, *epoch, |s| {
                s.retry_at = Some(now + PARTITION_BACKOFF)
            });
        }
        let due: Vec<(Key, Followed)> = f
            .parts
            .borrow()
            .iter()
            .filter(|(_, s)| s.retry_at.is_none_or(|t| t <= now))
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        if due.is_empty() {
            // Nothing to fetch now: wait for a change or the next retry.
            f.idle(f.idle_wait(now)).await;
            continue;
        }
        if conn.is_none() {
            match Conn::open(addr).await {
                Ok(c) => {
                    if down_logged {
                        tracing::info!(leader = f.leader, %addr, "partition leader reachable");
                        down_logged = false;
                    }
                    conn = Some(c);
                }
                Err(e) => {
                    if !down_logged {
                        tracing::info!(leader = f.leader, %addr, error = %e, "partition leader unreachable; retrying");
                        down_logged = true;
                    }
                    glommio::timer::sleep(RECONNECT_BACKOFF).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        // A partition starting to follow truncates what the leader may not have.
        let mut failed = false;
        for (key, st) in due.iter().filter(|(_, s)| !s.truncated) {
            let Some(p) = shard.partition(&key.0, key.1) else {
                // Gone during an await above; skipped as missing on the next pass.
                continue;
            };
            match truncate(&shard, c, &p, key, st.epoch).await {
                Ok(()) => set_state(&f, key, st.epoch, |s| s.truncated = true),
                Err(TruncateError::Io(e)) => {
                    tracing::debug!(leader = f.leader, error = %e, "replica fetcher connection lost");
                    failed = true;
                    break;
                }
                Err(TruncateError::Later(why)) => {
                    tracing::debug!(topic = %key.0, partition = key.1, why, "truncation postponed");
                    set_state(&f, key, st.epoch, |s| {
                        s.retry_at = Some(Instant::now() + PARTITION_BACKOFF)
                    });
                }
            }
        }
        if failed {
            conn = None;
            glommio::timer::sleep(RECONNECT_BACKOFF).await;
            continue;
        }
        // One Fetch for every partition ready to fetch.
        let mut sent: Vec<(Key, i32, Rc<Partition>)> = Vec::new();
        let mut topics: Vec<FetchTopic> = Vec::new();
        for (key, st) in &due {
            if !still_followed(&f, key, st.epoch)
                || !f.parts.borrow().get(key).is_some_and(|s| s.truncated)
            {
                continue;
            }
            let Some(p) = shard.partition(&key.0, key.1) else {
                continue;
            };
            let part = FetchPartition::default()
                .with_partition(key.1)
                .with_current_leader_epoch(st.epoch)
                .with_fetch_offset(p.log.log_end_offset())
                .with_log_start_offset(p.log.log_start_offset())
                .with_partition_max_bytes(PARTITION_MAX_BYTES);
            match topics.last_mut() {
                Some(t) if t.topic.0.as_str() == key.0 => t.partitions.push(part),
                _ => topics.push(
                    FetchTopic::default()
                        .with_topic(kafka_protocol::messages::TopicName(
                            kafka_protocol::protocol::StrBytes::from_string(key.0.to_string()),
                        ))
                        .with_partitions(vec![part]),
                ),
            }
            sent.push((key.clone(), st.epoch, p));
        }
        if sent.is_empty() {
            // Nothing ready (truncations postponed, partitions gone or re-followed
            // meanwhile). Going round at once could spin without yielding; idle
            // instead (a change wakes it, and a pending wake returns at once).
            f.idle(f.idle_wait(Instant::now())).await;
            continue;
        }
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(shard.config.node_id))
            .with_max_wait_ms(FETCH_MAX_WAIT_MS)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_MAX_BYTES)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(topics);
        let timeout = Duration::from_millis(FETCH_MAX_WAIT_MS as u64) + RESPONSE_GRACE;
        let resp = match c.call(&req, FETCH_VERSION, timeout).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(leader = f.leader, error = %e, "replica fetch failed; reconnecting");
                conn = None;
                glommio::timer::sleep(RECONNECT_BACKOFF).await;
                continue;
            }
        };
        if resp.error_code != ec::NONE {
            tracing::debug!(
                leader = f.leader,
                code = resp.error_code,
                "replica fetch refused"
            );
            glommio::timer::sleep(PARTITION_BACKOFF).await;
            continue;
        }
        for t in resp.responses {
            for pd in t.partitions {
                let key: Key = (t.topic.0.to_string(), pd.partition_index);
                let Some((_, epoch, p)) = sent.iter().find(|(k, _, _)| *k == key) else {
                    continue;
                };
                if !still_followed(&f, &key, *epoch) {
                    continue;
                }
                match pd.error_code {
                    ec::NONE => {
                        if let Some(records) = pd.records.filter(|r| !r.is_empty()) {
                            // Stored as fetched, and durable before the next fetch.
                            if let Err(e) = p.append_replicated(records).await {
                                tracing::warn!(topic = %key.0, partition = key.1, error = %e, "replicated append failed; truncating again");
                                set_state(&f, &key, *epoch, |s| {
                                    s.truncated = false;
                                    s.retry_at = Some(Instant::now() + PARTITION_BACKOFF);
                                });
                                continue;
                            }
                        }
                        p.set_follower_high_watermark(pd.high_watermark);
                    }
                    ec::OFFSET_OUT_OF_RANGE if pd.log_start_offset > p.log.log_end_offset() => {
                        // The leader no longer has what comes next here (retention):
                        // start over at its log start (Kafka's truncateFullyAndStartAt).
                        tracing::warn!(topic = %key.0, partition = key.1, fetch_offset = p.log.log_end_offset(), leader_log_start = pd.log_start_offset, "replica behind the leader's log start; starting over there");
                        if let Err(e) = p.truncate_fully_and_start_at(pd.log_start_offset).await {
                            tracing::warn!(topic = %key.0, partition = key.1, error = %e, "replica restart at the leader's log start failed");
                            set_state(&f, &key, *epoch, |s| {
                                s.retry_at = Some(Instant::now() + PARTITION_BACKOFF)
                            });
                        }
                    }
                    ec::OFFSET_OUT_OF_RANGE => {
                        tracing::warn!(topic = %key.0, partition = key.1, fetch_offset = p.log.log_end_offset(), leader_log_start = pd.log_start_offset, "replica fetch offset out of range; truncating again");
                        set_state(&f, &key, *epoch, |s| {
                            s.truncated = false;
                            s.retry_at = Some(Instant::now() + PARTITION_BACKOFF);
                        });
                    }
                    code => {
                        tracing::debug!(topic = %key.0, partition = key.1, code, "leader refused the replica fetch");
                        set_state(&f, &key, *epoch, |s| {
                            s.retry_at = Some(Instant::now() + PARTITION_BACKOFF)
                        });
                    }
                }
            }
        }
    }
}

enum TruncateError {
    /// The connection failed.
    Io(String),
    /// Not possible right now (the leader does not know the epoch yet, ...).
    Later(String),
}

/// The latest leader epoch with batches in `p`'s log (its leader-epoch cache); `None`
/// makes `truncate` use its high-watermark fallback.
fn latest_epoch(p: &Partition) -> Option<i32> {
    p.log.latest_epoch()
}

/// OffsetForLeaderEpoch v4.
const OFFSET_FOR_LEADER_EPOCH_VERSION: i16 = 4;
const TRUNCATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Before fetching from a new leader or epoch: drop the tail of this log the leader
/// does not have (KIP-101: ask the leader where this replica's latest epoch ends
/// there, keep min(that, log end)), and make the rest durable (a former leader's
/// acks=1 writes may not be), so the first fetch offset is a durable end.
async fn truncate(
    shard: &Shard,
    conn: &mut Conn,
    p: &Partition,
    key: &Key,
    epoch: i32,
) -> Result<(), TruncateError> {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::OffsetForLeaderEpochRequest;
    let end = p.log.log_end_offset();
    let keep = match latest_epoch(p) {
        _ if end == p.log.log_start_offset() => end,
        Some(last) => {
            let req = OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(shard.config.node_id))
                .with_topics(vec![OffsetForLeaderTopic::default()
                    .with_topic(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_string(key.0.to_string()),
                    ))
                    .with_partitions(vec![OffsetForLeaderPartition::default()
                        .with_partition(key.1)
                        .with_current_leader_epoch(epoch)
                        .with_leader_epoch(last)])]);
            let resp = conn
                .call(&req, OFFSET_FOR_LEADER_EPOCH_VERSION, TRUNCATE_TIMEOUT)
                .await
                .map_err(|e| TruncateError::Io(e.to_string()))?;
            let r = resp
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .ok_or_else(|| TruncateError::Later("empty OffsetForLeaderEpoch answer".into()))?;
            if r.error_code != ec::NONE {
                return Err(TruncateError::Later(format!(
                    "OffsetForLeaderEpoch error {}",
                    r.error_code
                )));
            }
            if r.end_offset < 0 {
                // The leader knows no epoch this old: keep only what is committed.
                p.high_watermark()
            } else {
                r.end_offset
            }
        }
        // FALLBACK (no epochs known here): keep what this replica knows is committed
        // (its high watermark: every in-sync replica, the new leader included, has
        // it) and fetch the rest again.
        None => p.high_watermark(),
    };
    if keep < end {
        tracing::info!(topic = %key.0, partition = key.1, epoch, keep, log_end = end, "truncating before following");
        p.truncate_to(keep)
            .await
            .map_err(|e| TruncateError::Later(e.to_string()))?;
        // Not above the log end, or it would count as committed when this replica leads.
        p.set_follower_high_watermark(p.high_watermark());
    }
    // A failed replicated append left the producer state unsure.
    p.ensure_producer_state().await;
    let end = p.log.log_end_offset();
    p.log
        .sync_to(end)
        .await
        .map_err(|e| TruncateError::Later(e.to_string()))
}

/// One connection to a leader's cluster listener, speaking Kafka after the hello.
struct Conn {
    stream: TcpStream,
    correlation: i32,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let mut stream = TcpStream::connect_timeout(addr, Duration::from_secs(1)).await?;
        let _ = stream.set_nodelay(true);
        stream.write_all(&transport::frame(KIND_KAFKA, &[])).await?;
        Ok(Conn {
            stream,
            correlation: 0,
        })
    }

    async fn call<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> anyhow::Result<R::Response> {
        self.correlation = self.correlation.wrapping_add(1);
        let correlation = self.correlation;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str("runnel-replica-fetcher")));
        let mut body = BytesMut::with_capacity(256);
        body.put_i32(0);
        header.encode(&mut body, R::header_version(version))?;
        req.encode(&mut body, version)?;
        let len = (body.len() - 4) as i32;
        body[..4].copy_from_slice(&len.to_be_bytes());
        let stream = &mut self.stream;
        let exchange = async move {
            stream.write_all(&body).await?;
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).await?;
            let len = i32::from_be_bytes(len);
            if len < 0 || len as usize > RESPONSE_BYTES_MAX {
                anyhow::bail!("response length {len} out of range");
            }
            // Grows with the bytes that arrive, not with the announced length.
            let mut buf = Vec::new();
            (&mut *stream)
                .take(len as u64)
                .read_to_end(&mut buf)
                .await?;
            if buf.len() != len as usize {
                anyhow::bail!("response ended after {} of {len} bytes", buf.len());
            }
            Ok::<_, anyhow::Error>(Bytes::from(buf))
        };
        let mut buf = with_timeout(timeout, exchange)
            .await
            .ok_or_else(|| anyhow::anyhow!("no response within {timeout:?}"))??;
        let api = ApiKey::try_from(R::KEY).map_err(|_| anyhow::anyhow!("unknown api key"))?;
        let header = ResponseHeader::decode(&mut buf, api.response_header_version(version))?;
        if header.correlation_id != correlation {
            anyhow::bail!("response to another request");
        }
        let resp = R::Response::decode(&mut buf, version)?;
        if buf.has_remaining() {
            tracing::debug!(
                left = buf.remaining(),
                "replica fetcher: trailing response bytes"
            );
        }
        Ok(resp)
    }
}

/// Leader side of in-sync set maintenance, one task per shard: asks the controller
/// (AlterPartition) to drop followers that have not caught up within
/// `replica.lag.time.max.ms` and to add those that reached the high watermark.
pub async fn isr_task(shard: Rc<Shard>) {
    let lag = Duration::from_millis(shard.config.replica_lag_time_max_ms);
    let interval = (lag / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let node = shard.config.node_id;
    loop {
        glommio::timer::sleep(interval).await;
        let parts: Vec<(String, i32, Rc<Partition>)> = shard
            .partitions
            .borrow()
            .iter()
            .flat_map(|(t, m)| m.iter().map(move |(i, p)| (t.to_string(), *i, p.clone())))
            .collect();
        let image = shard.image();
        for (topic, partition, p) in parts {
            let Some((leader_epoch, mut isr)) = p.isr_change(node, lag) else {
                continue;
            };
            // A broker in controlled shutdown still fetches until it exits; it does not
            // rejoin (the controller would drop it from the request anyway).
            if !image.shutting_down.is_empty() {
                let current = image
                    .topic(&topic)
                    .and_then(|t| t.replicas.get(partition as usize))
                    .map(|s| s.isr.clone())
                    .unwrap_or_default();
                isr.retain(|r| current.contains(r) || !image.shutting_down.contains(r));
                let mut a = isr.clone();
                a.sort_unstable();
                let mut b = current;
                b.sort_unstable();
                if a == b {
                    continue;
                }
            }
            tracing::info!(%topic, partition, leader_epoch, ?isr, "asking to change the in-sync set");
            p.set_pending_isr(Some(isr.clone()));
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let cmd = crate::replication::commands::MetaCommand::AlterPartition {
                    topic: topic.clone(),
                    partition,
                    leader: node,
                    leader_epoch,
                    isr,
                };
                match crate::replication::apply::commit_meta(&shard, cmd).await {
                    Ok(crate::replication::commands::MetaReply::AlterPartition(Err((code, msg)))) => {
                        tracing::info!(%topic, partition, code, msg, "in-sync set change refused")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%topic, partition, error = %e, "in-sync set change not committed")
                    }
                }
                // Committed (and applied here) or refused: the image says what holds.
                p.set_pending_isr(None);
            })
            .detach();
        }
    }
}
