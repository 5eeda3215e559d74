//! A partition as its owning shard holds it: the log, the idempotent-producer state and
//! the waiters of long-polling fetches. Lives on exactly one shard; never `Send`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::time::Instant;

use bytes::Bytes;
use futures::channel::oneshot;

use super::producer_state::{self as pstate, Producers, PRODUCER_BATCHES_REMEMBERED};
use crate::config::BrokerConfig;
use crate::kafka_error as ec;
use crate::metrics::{self, Stage, StagedApi};
use crate::segment::{self, Durability, LogConfig, PartitionLog, TimestampType, ValidBatch};
use crate::time::now_ms;

const PRODUCER_STATE_READ_BYTES: usize = 1 << 20;
/// Appended bytes after which the producer state is snapshotted even without a roll:
/// bounds what a restart after a crash replays (segments can be 1 GiB).
const PRODUCER_SNAPSHOT_INTERVAL_BYTES: usize = 32 << 20;

pub struct Partition {
    pub log: Rc<PartitionLog>,
    /// Idempotent-producer state of the whole log, kept in step with it on a leader
    /// (produced batches) and on a follower (replicated ones), as Kafka's
    /// ProducerStateManager is: a follower taking over must answer the producer's next
    /// batch from the same state the old leader had.
    producers: RefCell<Producers>,
    /// `producers` matches the log. False from a truncation (or a failed replicated
    /// append) until the rebuild from the log finishes; produce is refused meanwhile.
    producers_valid: Cell<bool>,
    /// Bumped whenever `producers` stops matching the log: a rebuild started before
    /// does not install what it read.
    producers_gen: Cell<u64>,
    /// Snapshot policy (`maybe_snapshot`): bytes appended since the last snapshot, the
    /// active segment's base then (a roll snapshots), the offset it covered (-1: none),
    /// and whether a write is running.
    snapshot_bytes: Cell<usize>,
    snapshot_segment: Cell<i64>,
    snapshot_offset: Cell<i64>,
    snapshotting: Cell<bool>,
    /// `producer.id.expiration.ms`: producers idle this long are left out of the next
    /// snapshot (and forgotten).
    producer_expiration_ms: Cell<i64>,
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// Cluster mode: this broker's role and, while it leads, what it knows of the
    /// followers. `None` on a single node (and for partitions without a replica
    /// table), where the high watermark is the written log end.
    repl: RefCell<Option<Replication>>,
    /// acks=all requests waiting for the high watermark to pass their offset; sent
    /// false when this broker stops leading.
    hw_waiters: RefCell<Vec<(i64, oneshot::Sender<bool>)>>,
    /// A sync of the leader's log, started because followers are ahead of its durable
    /// end, is running.
    syncing: Cell<bool>,
    /// A write of batches appended without a flush (acks=0/1) is running, so that
    /// consumers, who see only written batches, get them without waiting for a full
    /// write buffer.
    writing: Cell<bool>,
    me: Weak<Partition>,
}

/// What this broker is for a replicated partition, per the metadata image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower(i32),
    /// No leader (every in-sync replica is down), or not a replica here any more.
    Offline,
}

/// What a leader knows of one follower (Kafka's replica state on the leader).
struct FollowerState {
    id: i32,
    /// Its last fetch offset: everything below is durable on it. -1: not fetched yet
    /// in this leader epoch.
    fetch_offset: i64,
    /// When it last fetched, and the leader's log end then.
    prev_fetch: Option<(Instant, i64)>,
    /// When its fetch offset last reached the leader's log end (Kafka's
    /// lastCaughtUpTime): too long ago and it leaves the in-sync set.
    last_caught_up: Instant,
    /// The high watermark its last fetch response carried (-1: none yet).
    hw_sent: i64,
}

/// Replication state of one partition in cluster mode.
struct Replication {
    role: Role,
    leader_epoch: i32,
    replicas: Vec<i32>,
    /// The committed in-sync set (the image's).
    isr: Vec<i32>,
    /// Leader: the in-sync set an AlterPartition in flight asks for.
    pending_isr: Option<Vec<i32>>,
    /// Leader: every other replica.
    followers: Vec<FollowerState>,
    /// Leader: min of its durable end and the fetch offsets of the maximal in-sync set;
    /// never decreases while it leads. Follower: the leader's, as last fetched.
    high_watermark: i64,
}

/// What applying a new partition state changed (the caller starts or stops fetching).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    BecameLeader,
    /// Follow this leader at this epoch (new leader or new epoch: truncate first).
    Follow(i32, i32),
    Offline,
}

/// Result of appending one partition's records.
#[derive(Debug, Clone)]
pub struct ProduceOutcome {
    pub error_code: i16,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
    pub error_message: Option<String>,
    /// The offset after the last batch answered (appended or a duplicate): what
    /// acks=all waits for the high watermark to reach. -1 on error.
    pub end_offset: i64,
}

impl ProduceOutcome {
    pub fn error(code: i16, message: impl Into<String>) -> Self {
        ProduceOutcome {
            error_code: code,
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
            error_message: Some(message.into()),
            end_offset: -1,
        }
    }
}

enum SequenceCheck {
    Append,
    Duplicate(i64),
    Reject(i16, String),
}

impl Partition {
    pub fn new(log: Rc<PartitionLog>) -> Rc<Self> {
        Rc::new_cyclic(|me| Partition {
            log,
            producers: RefCell::default(),
            producers_valid: Cell::new(true),
            producers_gen: Cell::new(0),
            snapshot_bytes: Cell::new(0),
            snapshot_segment: Cell::new(-1),
            snapshot_offset: Cell::new(-1),
            snapshotting: Cell::new(false),
            producer_expiration_ms: Cell::new(
                crate::config::PRODUCER_ID_EXPIRATION_MS_DEFAULT as i64,
            ),
            waiters: RefCell::default(),
            repl: RefCell::default(),
            hw_waiters: RefCell::default(),
            syncing: Cell::new(false),
            writing: Cell::new(false),
            me: me.clone(),
        })
    }

    /// `producer.id.expiration.ms` (validated positive); set before the first rebuild.
    pub fn set_producer_id_expiration_ms(&self, ms: u64) {
        self.producer_expiration_ms
            .set(i64::try_from(ms).unwrap_or(i64::MAX).max(1));
    }

    /// Whether this partition is replicated (cluster mode, with a replica table).
    #[inline]
    pub fn is_replicated(&self) -> bool {
        self.repl.borrow().is_some()
    }

    /// `None` on a single node.
    pub fn role(&self) -> Option<Role> {
        self.repl.borrow().as_ref().map(|r| r.role)
    }

    /// The leader epoch of the image's state (0 on a single node).
    pub fn leader_epoch(&self) -> i32 {
        self.repl.borrow().as_ref().map_or(0, |r| r.leader_epoch)
    }

    /// Offsets below this are on every in-sync replica, durably: what consumers may
    /// read. On a single node, the written log end: batches still in the write buffers
    /// die with the process, and a consumer that read them would find its position (and
    /// its committed offset) past the log end after a restart, and be reset.
    #[inline]
    pub fn high_watermark(&self) -> i64 {
        match self.repl.borrow().as_ref() {
            None => self.log.written_offset().min(self.log.log_end_offset()),
            Some(r) => r.high_watermark.min(self.log.log_end_offset()),
        }
    }

    /// The committed in-sync set's size (1 on a single node).
    pub fn isr_len(&self) -> usize {
        self.repl.borrow().as_ref().map_or(1, |r| r.isr.len())
    }

    /// Applies the image's state of this partition (`node`: this broker).
    pub fn apply_state(&self, node: i32, st: &crate::metadata::PartitionState) -> Transition {
        let role = if st.leader == node {
            Role::Leader
        } else if st.leader >= 0 && st.replicas.contains(&node) {
            Role::Follower(st.leader)
        } else {
            Role::Offline
        };
        let mut guard = self.repl.borrow_mut();
        let now = Instant::now();
        let fresh_followers = || {
            st.replicas
                .iter()
                .filter(|id| **id != node)
                .map(|id| FollowerState {
                    id: *id,
                    fetch_offset: -1,
                    prev_fetch: None,
                    last_caught_up: now,
                    hw_sent: -1,
                })
                .collect::<Vec<_>>()
        };
        let (old_role, old_epoch) = guard
            .as_ref()
            .map_or((None, -1), |r| (Some(r.role), r.leader_epoch));
        let r = guard.get_or_insert_with(|| Replication {
            role: Role::Offline,
            leader_epoch: -1,
            replicas: Vec::new(),
            isr: Vec::new(),
            pending_isr: None,
            followers: Vec::new(),
            high_watermark: 0,
        });
        let changed = old_role != Some(role) || old_epoch != st.leader_epoch;
        r.replicas = st.replicas.clone();
        r.isr = st.isr.clone();
        r.role = role;
        r.leader_epoch = st.leader_epoch;
        if !changed {
            drop(guard);
            if role == Role::Leader {
                // An ISR change can move the high watermark.
                self.update_high_watermark();
            }
            return Transition::Unchanged;
        }
        r.pending_isr = None;
        // What a follower learned may be above what it kept after truncating.
        r.high_watermark = r.high_watermark.min(self.log.log_end_offset());
        r.followers = if role == Role::Leader {
            fresh_followers()
        } else {
            Vec::new()
        };
        drop(guard);
        if role != Role::Leader {
            // Deposed: whoever waits for acks=all here is told to go to the new leader.
            for (_, tx) in self.hw_waiters.borrow_mut().drain(..) {
                let _ = tx.send(false);
            }
        }
        self.wake_waiters();
        match role {
            Role::Leader => {
                // Produced batches carry this leader's epoch from now on.
                self.log.set_leader_epoch(st.leader_epoch.max(0));
                self.update_high_watermark();
                Transition::BecameLeader
            }
            Role::Follower(l) => Transition::Follow(l, st.leader_epoch),
            Role::Offline => Transition::Offline,
        }
    }

    /// Leader: follower `id` fetched from `offset` at leader epoch `epoch` (-1: not
    /// given). Returns an error code for a fetch this leader must refuse.
    pub fn follower_fetch(&self, id: i32, offset: i64, epoch: i32) -> Result<(), i16> {
        let end = self.log.log_end_offset();
        {
            let mut guard = self.repl.borrow_mut();
            let Some(r) = guard.as_mut() else {
                return Err(ec::NOT_LEADER_OR_FOLLOWER);
            };
            if r.role != Role::Leader {
                return Err(ec::NOT_LEADER_OR_FOLLOWER);
            }
            if epoch >= 0 && epoch < r.leader_epoch {
                return Err(ec::FENCED_LEADER_EPOCH);
            }
            if epoch > r.leader_epoch {
                return Err(ec::UNKNOWN_LEADER_EPOCH);
            }
            let Some(f) = r.followers.iter_mut().find(|f| f.id == id) else {
                return Err(ec::NOT_LEADER_OR_FOLLOWER);
            };
            if offset > end {
                return Err(ec::OFFSET_OUT_OF_RANGE);
            }
            let now = Instant::now();
            if offset >= end {
                f.last_caught_up = now;
            } else if let Some((at, prev_end)) = f.prev_fetch {
                // Caught up with what the leader had at its previous fetch: under a
                // steady stream a follower is never exactly at the end.
                if offset >= prev_end {
                    f.last_caught_up = f.last_caught_up.max(at);
                }
            }
            f.prev_fetch = Some((now, end));
            f.fetch_offset = offset;
        }
        self.update_high_watermark();
        Ok(())
    }

    /// Leader: whether follower `id` has not been told the current high watermark yet;
    /// marks it told, so the caller must answer its fetch now. A long-polling follower
    /// fetch ends on this, so followers learn the high watermark when it moves rather
    /// than with their next data or at the end of the long poll.
    pub fn follower_hw_news(&self, id: i32) -> bool {
        let end = self.log.log_end_offset();
        let mut guard = self.repl.borrow_mut();
        let Some(r) = guard.as_mut().filter(|r| r.role == Role::Leader) else {
            return false;
        };
        let hw = r.high_watermark.min(end);
        let Some(f) = r.followers.iter_mut().find(|f| f.id == id) else {
            return false;
        };
        if hw > f.hw_sent {
            f.hw_sent = hw;
            return true;
        }
        false
    }

    /// Follower: the leader's high watermark as its fetch response said.
    pub fn set_follower_high_watermark(&self, hw: i64) {
        if let Some(r) = self.repl.borrow_mut().as_mut() {
            if r.role != Role::Leader {
                r.high_watermark = hw.min(self.log.log_end_offset());
            }
        }
    }

    /// Leader: recomputes the high watermark from the maximal in-sync set (committed
    /// plus a pending expansion); wakes acks=all waiters and consumers it passes.
    fn update_high_watermark(&self) {
        let (hw, advanced, sync_to) = {
            let mut guard = self.repl.borrow_mut();
            let Some(r) = guard.as_mut().filter(|r| r.role == Role::Leader) else {
                return;
            };
            let end = self.log.log_end_offset();
            let in_max_isr = |id: i32| {
                r.isr.contains(&id) || r.pending_isr.as_ref().is_some_and(|p| p.contains(&id))
            };
            let followers_min = r
                .followers
                .iter()
                .filter(|f| in_max_isr(f.id))
                .map(|f| f.fetch_offset)
                .min();
            let (candidate, sync_to) = match followers_min {
                // Alone in sync: what it has written, as on a single node.
                None => (self.log.written_offset().min(end), None),
                Some(m) => {
                    let durable = self.log.durable_offset();
                    // Followers hold data the leader has not synced yet (acks=1
                    // writes): sync it so the high watermark can move.
                    let sync = (m > durable).then_some(m);
                    (m.min(durable), sync)
                }
            };
            let advanced = candidate > r.high_watermark;
            if advanced {
                r.high_watermark = candidate;
            }
            (r.high_watermark, advanced, sync_to)
        };
        if let Some(target) = sync_to {
            self.start_sync(target);
        }
        // Only a move wakes anyone: waking long-polling followers on every fetch would
        // have two followers wake each other in a loop.
        if !advanced {
            return;
        }
        {
            let mut waiters = self.hw_waiters.borrow_mut();
            let mut i = 0;
            while i < waiters.len() {
                if waiters[i].0 <= hw {
                    let (_, tx) = waiters.swap_remove(i);
                    let _ = tx.send(true);
                } else {
                    i += 1;
                }
            }
        }
        self.wake_waiters();
    }

    /// Writes what was appended but not written yet (acks=0/1 leave it in the write
    /// buffers) and then wakes consumers: they only see written batches. One writer at
    /// a time; it goes on while appends arrive during its writes (group commit).
    fn start_write(&self) {
        if self.writing.get() || self.log.written_offset() >= self.log.log_end_offset() {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        self.writing.set(true);
        glommio::spawn_local(async move {
            loop {
                let target = me.log.log_end_offset();
                let result = me.log.write_to(target).await;
                me.wake_waiters();
                if me.is_replicated() {
                    me.update_high_watermark();
                }
                if let Err(e) = result {
                    tracing::warn!(dir = %me.log.dir().display(), error = %e, "log write failed");
                    break;
                }
                if me.log.written_offset() >= me.log.log_end_offset() {
                    break;
                }
            }
            me.writing.set(false);
        })
        .detach();
    }

    fn start_sync(&self, target: i64) {
        if self.syncing.get() {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        self.syncing.set(true);
        glommio::spawn_local(async move {
            if let Err(e) = me.log.sync_to(target).await {
                tracing::warn!(dir = %me.log.dir().display(), error = %e, "leader log sync failed");
            }
            me.syncing.set(false);
            me.update_high_watermark();
        })
        .detach();
    }

    /// acks=all: resolves `Ok` once the high watermark reaches `offset`; `Err` with
    /// the error code when this broker stops leading or `timeout` passes first.
    pub async fn wait_high_watermark(
        &self,
        offset: i64,
        timeout: std::time::Duration,
    ) -> Result<(), i16> {
        if !self.is_replicated() {
            return Ok(());
        }
        self.update_high_watermark();
        if self.role() != Some(Role::Leader) {
            return Err(ec::NOT_LEADER_OR_FOLLOWER);
        }
        if self.high_watermark() >= offset {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.hw_waiters.borrow_mut().push((offset, tx));
        match crate::time::with_timeout(timeout, rx).await {
            Some(Ok(true)) => Ok(()),
            Some(Ok(false)) | Some(Err(_)) => Err(ec::NOT_LEADER_OR_FOLLOWER),
            None => Err(ec::REQUEST_TIMED_OUT),
        }
    }

    /// Leader: the in-sync set to ask the controller for, if it should change now —
    /// followers not caught up within `lag` leave, followers at the high watermark
    /// join. `None` while a change is in flight or nothing changes. Replica order.
    pub fn isr_change(&self, node: i32, lag: std::time::Duration) -> Option<(i32, Vec<i32>)> {
        let guard = self.repl.borrow();
        let r = guard.as_ref().filter(|r| r.role == Role::Leader)?;
        if r.pending_isr.is_some() {
            return None;
        }
        let now = Instant::now();
        let hw = r.high_watermark;
        let keep = |id: i32| -> bool {
            if id == node {
                return true;
            }
            let Some(f) = r.followers.iter().find(|f| f.id == id) else {
                return false;
            };
            if r.isr.contains(&id) {
                now.duration_since(f.last_caught_up) <= lag
            } else {
                f.fetch_offset >= 0 && f.fetch_offset >= hw
            }
        };
        let wanted: Vec<i32> = r.replicas.iter().copied().filter(|id| keep(*id)).collect();
        let mut current = r.isr.clone();
        current.sort_unstable();
        let mut sorted = wanted.clone();
        sorted.sort_unstable();
        (sorted != current).then_some((r.leader_epoch, wanted))
    }

    /// Leader: an AlterPartition for `isr` is (`Some`) or is no longer (`None`) in flight.
    pub fn set_pending_isr(&self, isr: Option<Vec<i32>>) {
        if let Some(r) = self.repl.borrow_mut().as_mut() {
            r.pending_isr = isr;
        }
        self.update_high_watermark();
    }

    /// Refuses a produce this broker must not append: it does not lead the partition
    /// (the image may name it leader before the partition applied that state), or its
    /// producer state is being rebuilt. The client retries after a metadata refresh.
    fn refuse_produce(&self) -> Option<ProduceOutcome> {
        if let Some(role) = self.role() {
            if role != Role::Leader {
                return Some(ProduceOutcome::error(
                    ec::NOT_LEADER_OR_FOLLOWER,
                    "this broker is not the partition's leader",
                ));
            }
        }
        if !self.producers_valid.get() {
            return Some(ProduceOutcome::error(
                ec::NOT_LEADER_OR_FOLLOWER,
                "the partition's producer state is being rebuilt",
            ));
        }
        None
    }

    /// Follower: appends a fetch response's batches (`PartitionLog::append_replicated`)
    /// and records their producers' sequences, unchecked, as Kafka's followers do.
    pub async fn append_replicated(
        &self,
        records: Bytes,
    ) -> Result<segment::ReplicatedAppend, segment::StorageError> {
        // Recorded before the append places the batches (at its first poll: nothing runs
        // in between), so whatever sees the log end sees their sequences too.
        // Unparsable bytes: the append refuses them, so nothing is recorded.
        let headers = segment::batch::split_batches(&records)?
            .iter()
            .map(|b| segment::BatchHeader::parse(b))
            .collect::<Result<Vec<_>, _>>()?;
        {
            let now = now_ms();
            let mut producers = self.producers.borrow_mut();
            for h in &headers {
                pstate::record_batch(&mut producers, h, now);
            }
        }
        let len = records.len();
        let result = self.log.append_replicated(records).await;
        if result.is_err() {
            // Recorded, but not (or not surely) in the log: rebuild before leading.
            self.invalidate_producer_state();
        } else {
            self.maybe_snapshot(len);
        }
        result
    }

    /// Drops the log from `offset` on (a divergent tail), then rebuilds the producer
    /// state from what is left: the dropped batches' sequences must not be answered
    /// as duplicates, nor the kept ones' continued from the dropped ones.
    pub async fn truncate_to(&self, offset: i64) -> Result<(), segment::StorageError> {
        self.invalidate_producer_state();
        let result = self.log.truncate_to(offset).await;
        self.ensure_producer_state().await;
        result
    }

    /// Empties the log and restarts it at `offset` (a follower behind the leader's log
    /// start); no producer has batches left in it.
    pub async fn truncate_fully_and_start_at(
        &self,
        offset: i64,
    ) -> Result<(), segment::StorageError> {
        self.invalidate_producer_state();
        let result = self.log.truncate_fully_and_start_at(offset).await;
        self.ensure_producer_state().await;
        result
    }

    fn invalidate_producer_state(&self) {
        self.producers_valid.set(false);
        self.producers_gen.set(self.producers_gen.get() + 1);
    }

    /// Rebuilds the producer state from the log if it does not match it (after a
    /// truncation or a failed replicated append).
    pub async fn ensure_producer_state(&self) {
        if self.producers_valid.get() {
            return;
        }
        let gen = self.producers_gen.get();
        if let Err(e) = self.rebuild_producer_state().await {
            tracing::warn!(dir = %self.log.dir().display(), error = %e, "producer state not rebuilt; idempotent retries may duplicate");
            if self.producers_gen.get() == gen {
                // Serving with no state (producers start wherever they say) beats
                // refusing every produce until a restart.
                self.producers.borrow_mut().clear();
                self.producers_valid.set(true);
            }
        }
    }

    /// Appends every batch of a produce request's `records` for this partition. Batches
    /// are checked before anything is written: one bad batch refuses the whole set.
    pub async fn produce(&self, records: Bytes, durability: Durability) -> ProduceOutcome {
        let batches = match segment::batch::split_batches(&records) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => return ProduceOutcome::error(ec::CORRUPT_MESSAGE, "empty records"),
            Err(e) => return ProduceOutcome::error(e.kafka_error_code(), e.to_string()),
        };
        let rules = segment::records::ProduceRules {
            compacted: self.log.is_compacted(),
        };
        let mut valid = Vec::with_capacity(batches.len());
        for b in batches {
            // Every record is checked once here (in place, or through a small window
            // while it decompresses); the batch is then stored as received. A batch
            // that lies inside would stop every consumer at its offset.
            let checked = ValidBatch::new(b).and_then(|v| {
                segment::records::validate_produced(v.header(), v.bytes(), rules)?;
                Ok(v)
            });
            match checked {
                Ok(v) => valid.push(v),
                Err(e) => {
                    // A hostile client can send thousands a second; it gets the reason
                    // in the response either way.
                    crate::warn_limited!(dir = %self.log.dir().display(), error = %e, "produced batch refused");
                    return ProduceOutcome::error(e.kafka_error_code(), e.to_string());
                }
            }
        }
        let mut first: Option<ProduceOutcome> = None;
        let mut appended = false;
        // End of the last batch answered as a duplicate of one already in the log.
        let mut duplicate_end: Option<i64> = None;
        let mut end_offset: i64 = -1;
        let count = valid.len();
        for (i, batch) in valid.into_iter().enumerate() {
            let h = *batch.header();
            // Copies of many batches must not hold the core; yield before, never inside,
            // the read-log-end .. append window below.
            glommio::yield_if_needed().await;
            // Checked per batch: leadership can move while earlier ones append.
            if let Some(refused) = self.refuse_produce() {
                if first.is_none() {
                    return refused;
                }
                break;
            }
            // Nothing runs between reading the log end and the append's first poll (which
            // assigns the offset), so this is the offset the batch will get.
            let base_if_appended = self.log.log_end_offset();
            match self.check_sequence(&h, base_if_appended) {
                SequenceCheck::Append => {}
                SequenceCheck::Duplicate(offset) => {
                    duplicate_end = Some(offset + i64::from(h.last_offset_delta) + 1);
                    end_offset = end_offset.max(offset + i64::from(h.last_offset_delta) + 1);
                    first.get_or_insert(ProduceOutcome {
                        error_code: ec::NONE,
                        base_offset: offset,
                        log_append_time_ms: -1,
                        log_start_offset: self.log.log_start_offset(),
                        error_message: None,
                        end_offset: -1,
                    });
                    continue;
                }
                SequenceCheck::Reject(code, msg) => {
                    if first.is_none() {
                        return ProduceOutcome::error(code, msg);
                    }
                    break;
                }
            }
            // Only the last batch waits for the durability asked for: the log is ordered, so
            // its flush covers the earlier ones (and concurrent requests share it).
            let d = if i + 1 == count {
                durability
            } else {
                Durability::Written
            };
            let append_started = Instant::now();
            match self.log.append_valid(batch, d).await {
                Ok(info) => {
                    let took = append_started.elapsed();
                    let flush = info.flush_wait.unwrap_or_default();
                    metrics::record_stage(
                        StagedApi::Produce,
                        Stage::Append,
                        took.saturating_sub(flush),
                    );
                    if let Some(flush) = info.flush_wait {
                        metrics::record_stage(StagedApi::Produce, Stage::Flush, flush);
                    }
                    appended = true;
                    end_offset = end_offset.max(info.last_offset + 1);
                    first.get_or_insert(ProduceOutcome {
                        error_code: ec::NONE,
                        base_offset: info.base_offset,
                        log_append_time_ms: info.log_append_time_ms,
                        log_start_offset: info.log_start_offset,
                        error_message: None,
                        end_offset: -1,
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "append failed");
                    if self.log.log_end_offset() == base_if_appended {
                        // Refused before an offset was assigned: forget the sequence,
                        // or the producer's retry would be answered as a duplicate of
                        // a batch that is not in the log.
                        self.forget_sequence(&h, base_if_appended);
                    }
                    if appended {
                        self.wake_waiters();
                    }
                    return ProduceOutcome::error(e.kafka_error_code(), e.to_string());
                }
            }
        }
        if appended {
            self.wake_waiters();
            if self.is_replicated() {
                self.update_high_watermark();
            }
            self.start_write();
            self.maybe_snapshot(records.len());
        }
        if let (Some(end), Durability::Durable) = (duplicate_end, durability) {
            // A retried batch is acknowledged with the same promise as the first try:
            // the first may still be waiting for its flush, or its flush may have
            // failed (a full disk) while the batch stayed queued in memory.
            if let Err(e) = self.log.sync_to(end).await {
                return ProduceOutcome::error(e.kafka_error_code(), e.to_string());
            }
        }
        let mut out =
            first.unwrap_or_else(|| ProduceOutcome::error(ec::UNKNOWN_SERVER_ERROR, "no batch"));
        if out.error_code == ec::NONE {
            out.end_offset = end_offset;
        }
        out
    }

    fn check_sequence(&self, h: &segment::BatchHeader, base_offset: i64) -> SequenceCheck {
        if h.producer_id < 0 {
            return SequenceCheck::Append;
        }
        let first_seq = h.base_sequence;
        let last_seq = first_seq.wrapping_add(h.last_offset_delta);
        let mut producers = self.producers.borrow_mut();
        let state = producers.entry(h.producer_id).or_default();
        state.last_ms = state.last_ms.max(now_ms());
        if h.producer_epoch < state.epoch {
            return SequenceCheck::Reject(
                ec::INVALID_PRODUCER_EPOCH,
                format!(
                    "producer epoch {} is older than {}",
                    h.producer_epoch, state.epoch
                ),
            );
        }
        if h.producer_epoch > state.epoch {
            state.epoch = h.producer_epoch;
            state.recent.clear();
        }
        if let Some(&(_, _, offset)) = state
            .recent
            .iter()
            .find(|(f, l, _)| *f == first_seq && *l == last_seq)
        {
            return SequenceCheck::Duplicate(offset);
        }
        // A producer this partition has no state for (new, or state lost with a restart:
        // it is not rebuilt from the log yet) starts wherever it says.
        if let Some(&(_, prev_last, _)) = state.recent.back() {
            let expected = if prev_last == i32::MAX {
                0
            } else {
                prev_last + 1
            };
            if first_seq != expected {
                return SequenceCheck::Reject(
                    ec::OUT_OF_ORDER_SEQUENCE_NUMBER,
                    format!("sequence {first_seq}, expected {expected}"),
                );
            }
        }
        state.recent.push_back((first_seq, last_seq, base_offset));
        if state.recent.len() > PRODUCER_BATCHES_REMEMBERED {
            state.recent.pop_front();
        }
        SequenceCheck::Append
    }

    /// Undoes `check_sequence`'s record of a batch that was then not appended.
    fn forget_sequence(&self, h: &segment::BatchHeader, base_offset: i64) {
        if h.producer_id < 0 {
            return;
        }
        let last_seq = h.base_sequence.wrapping_add(h.last_offset_delta);
        if let Some(state) = self.producers.borrow_mut().get_mut(&h.producer_id) {
            if state.recent.back() == Some(&(h.base_sequence, last_seq, base_offset)) {
                state.recent.pop_back();
            }
        }
    }

    /// Rebuilds idempotent-producer state (on open, and after a truncation), so a
    /// producer retrying a batch the log holds gets the original offset back instead of
    /// a second copy, and its next batch continues its sequence, however long it was
    /// idle: from the newest intact snapshot within the log (`maybe_snapshot`) plus the
    /// batches after it, or, with none, from every batch from the log start (a damaged
    /// snapshot is removed and the next older one tried). Reads up to the log end as it
    /// is when the scan ends; the result replaces the state unless it was invalidated
    /// meanwhile.
    pub async fn rebuild_producer_state(&self) -> Result<usize, segment::StorageError> {
        let gen = self.producers_gen.get();
        let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
        let mut producers = Producers::new();
        let mut from = start;
        let mut loaded = None;
        for offset in self.log.producer_snapshot_offsets().into_iter().rev() {
            if !(start..=end).contains(&offset) {
                continue;
            }
            let decoded = self
                .log
                .read_producer_snapshot(offset)
                .map_err(|e| e.to_string())
                .and_then(|raw| pstate::decode_snapshot(&raw, offset));
            match decoded {
                Ok(p) => {
                    producers = p;
                    from = offset;
                    loaded = Some(offset);
                    break;
                }
                Err(e) => {
                    tracing::warn!(dir = %self.log.dir().display(), offset, error = %e,
                        "producer-state snapshot unusable: removed; falling back to an older one or the log");
                    self.log.remove_producer_snapshots(|o| o == offset);
                }
            }
        }
        if loaded.is_none() && end > start {
            tracing::info!(dir = %self.log.dir().display(), from = start, to = end,
                "no producer-state snapshot within the log: rebuilding from every batch");
        }
        // A snapshot may be old: its idle producers expire as they would have live.
        // Replayed batches count as seen now (the log does not say when they came).
        let now = now_ms();
        pstate::expire(&mut producers, now, self.producer_expiration_ms.get());
        let mut scanned = 0usize;
        let mut offset = from;
        // The log end is read afresh: batches a follower appends meanwhile count.
        while offset < self.log.log_end_offset() {
            let read = self.log.read(offset, PRODUCER_STATE_READ_BYTES).await?;
            // Joining the chunks (one copy) keeps the parsing simple; rare path.
            let joined: Bytes = read.chunks.concat().into();
            if joined.is_empty() {
                break;
            }
            scanned += joined.len();
            for b in segment::batch::split_batches(&joined)? {
                let h = segment::BatchHeader::parse(&b)?;
                offset = h.last_offset() + 1;
                pstate::record_batch(&mut producers, &h, now);
            }
        }
        if self.producers_gen.get() != gen {
            // Truncated meanwhile: that truncation's own rebuild installs the state.
            return Ok(0);
        }
        let n = producers.len();
        tracing::debug!(dir = %self.log.dir().display(), snapshot = ?loaded, scanned_bytes = scanned,
            producers = n, "producer state rebuilt");
        *self.producers.borrow_mut() = producers;
        self.producers_valid.set(true);
        self.snapshot_offset.set(loaded.unwrap_or(-1));
        self.snapshot_bytes.set(scanned);
        self.snapshot_segment.set(self.log.active_segment_base());
        // A long replay is not repeated by the next restart.
        self.maybe_snapshot(0);
        Ok(n)
    }

    /// After `bytes` were appended: snapshots the producer state when the log rolled
    /// since the last snapshot or `PRODUCER_SNAPSHOT_INTERVAL_BYTES` went by (Kafka
    /// snapshots at each roll). The state is encoded here, in step with the log end
    /// (every batch below it recorded, none above), and written by a task.
    fn maybe_snapshot(&self, bytes: usize) {
        self.snapshot_bytes
            .set(self.snapshot_bytes.get().saturating_add(bytes));
        let rolled = self.log.active_segment_base() != self.snapshot_segment.get();
        // The log start passed the newest snapshot (DeleteRecords into the active
        // segment): the log removed it, and a restart would lose the producers whose
        // batches are gone, which Kafka keeps until they expire.
        let passed = (0..self.log.log_start_offset()).contains(&self.snapshot_offset.get());
        if self.snapshotting.get()
            || !(rolled || passed || self.snapshot_bytes.get() >= PRODUCER_SNAPSHOT_INTERVAL_BYTES)
        {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let Some(taken) = self.take_snapshot() else {
            return;
        };
        self.snapshotting.set(true);
        glommio::spawn_local(async move {
            me.write_snapshot(taken).await;
            me.snapshotting.set(false);
        })
        .detach();
    }

    /// The producer state encoded as of the log end now, with what the write needs;
    /// `None` while the state does not match the log.
    fn take_snapshot(&self) -> Option<(i64, u64, Vec<u8>)> {
        if !self.producers_valid.get() {
            return None;
        }
        let offset = self.log.log_end_offset();
        let token = self.log.producer_snapshot_token();
        let mut producers = self.producers.borrow_mut();
        let expired = pstate::expire(&mut producers, now_ms(), self.producer_expiration_ms.get());
        if expired > 0 {
            tracing::debug!(dir = %self.log.dir().display(), expired, "idle idempotent producers expired");
        }
        let data = pstate::encode_snapshot(offset, &producers);
        drop(producers);
        self.snapshot_bytes.set(0);
        self.snapshot_segment.set(self.log.active_segment_base());
        Some((offset, token, data))
    }

    async fn write_snapshot(&self, (offset, token, data): (i64, u64, Vec<u8>)) {
        match self.log.write_producer_snapshot(offset, token, &data).await {
            Ok(true) => self.snapshot_offset.set(offset),
            // Truncated or closed meanwhile: the snapshot no longer describes the log.
            Ok(false) => {}
            // Snapshots only shorten a rebuild: the next one retries.
            Err(e) => {
                tracing::warn!(dir = %self.log.dir().display(), error = %e, "could not write a producer-state snapshot")
            }
        }
    }

    /// Clean shutdown: snapshots the producer state at the log end (unless the newest
    /// snapshot is there already), so the next start replays nothing. Call before the
    /// log closes, with appends stopped.
    pub async fn snapshot_producer_state(&self) {
        let end = self.log.log_end_offset();
        // An empty log without producers (most fresh partitions) has nothing to replay:
        // a stop with many partitions is not slowed by a synced write for each.
        let nothing = end == self.log.log_start_offset() && self.producers.borrow().is_empty();
        if self.snapshot_offset.get() == end || nothing {
            return;
        }
        if let Some(taken) = self.take_snapshot() {
            self.write_snapshot(taken).await;
        }
    }

    fn wake_waiters(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            let _ = w.send(());
        }
    }

    /// Resolves when the log end (with `consumer`, the high watermark) passes
    /// `offset`, or after `wait_ms`.
    pub async fn wait_for_data(&self, offset: i64, wait_ms: u64, consumer: bool) {
        let end = if consumer {
            self.high_watermark()
        } else {
            self.log.log_end_offset()
        };
        if end > offset || wait_ms == 0 {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push(tx);
        let timer = glommio::timer::sleep(std::time::Duration::from_millis(wait_ms));
        futures::pin_mut!(timer);
        let _ = futures::future::select(rx, timer).await;
    }
}

/// Topic configs with Kafka's names → the log's settings, over the broker's defaults
/// (`message.max.bytes`, the shard's share of `log.cleaner.dedupe.buffer.size`);
/// unknown keys are kept in the metadata but ignored here.
pub fn log_config_for(configs: &BTreeMap<String, String>, broker: &BrokerConfig) -> LogConfig {
    let mut c = LogConfig {
        max_message_bytes: broker.message_max_bytes,
        dedupe_buffer_bytes: broker.dedupe_buffer_bytes_per_shard(),
        ..LogConfig::default()
    };
    for (k, v) in configs {
        let parsed = v.parse::<i64>().ok();
        match (k.as_str(), parsed) {
            ("segment.bytes", Some(n)) if n > 0 => c.segment_bytes = n as u64,
            ("segment.ms", Some(n)) if n > 0 => c.segment_ms = n,
            ("index.interval.bytes", Some(n)) if n > 0 => c.index_interval_bytes = n as u32,
            ("retention.bytes", Some(n)) => c.retention_bytes = n,
            ("retention.ms", Some(n)) => c.retention_ms = n,
            ("flush.messages", Some(n)) if n > 0 => c.flush_messages = n,
            ("flush.ms", Some(n)) if n >= 0 => c.flush_ms = n,
            ("max.message.bytes", Some(n)) if n > 0 => c.max_message_bytes = n as u32,
            ("delete.retention.ms", Some(n)) if n >= 0 => c.delete_retention_ms = n,
            ("min.compaction.lag.ms", Some(n)) if n >= 0 => c.min_compaction_lag_ms = n,
            ("max.compaction.lag.ms", Some(n)) if n >= 1 => c.max_compaction_lag_ms = n,
            ("min.cleanable.dirty.ratio", _) => {
                if let Ok(r) = v.parse::<f64>() {
                    c.min_cleanable_dirty_ratio = r.clamp(0.0, 1.0);
                }
            }
            ("cleanup.policy", _) => {
                c.cleanup_delete = v.split(',').any(|p| p.trim() == "delete");
                c.cleanup_compact = v.split(',').any(|p| p.trim() == "compact");
            }
            ("message.timestamp.type", _) => {
                c.message_timestamp_type = if v == "LogAppendTime" {
                    TimestampType::LogAppendTime
                } else {
                    TimestampType::CreateTime
                }
            }
            _ => {}
        }
    }
    c
}

/// Checks across keys of a topic's whole config set (each key passed
/// `validate_topic_config`): Kafka refuses a minimum compaction lag above the maximum.
pub fn validate_topic_configs(configs: &BTreeMap<String, String>) -> Result<(), String> {
    let get = |k: &str, default: i64| {
        configs
            .get(k)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(default)
    };
    let (min, max) = (
        get("min.compaction.lag.ms", 0),
        get("max.compaction.lag.ms", i64::MAX),
    );
    if min > max {
        return Err(format!(
            "min.compaction.lag.ms={min} is above max.compaction.lag.ms={max}"
        ));
    }
    Ok(())
}

/// Topic config keys AlterConfigs/CreateTopics accept, with a validity check each.
pub fn validate_topic_config(key: &str, value: &str) -> Result<(), String> {
    let int = || {
        value
            .parse::<i64>()
            .map_err(|_| format!("{key}={value}: not an integer"))
    };
    match key {
        "segment.bytes"
        | "segment.ms"
        | "index.interval.bytes"
        | "flush.messages"
        | "max.message.bytes" => {
            if int()? <= 0 {
                return Err(format!("{key}={value}: must be positive"));
            }
        }
        "retention.bytes"
        | "retention.ms"
        | "flush.ms"
        | "delete.retention.ms"
        | "min.insync.replicas"
        | "min.compaction.lag.ms" => {
            if int()? < -1 {
                return Err(format!("{key}={value}: must be -1 or more"));
            }
        }
        "message.timestamp.type" => {
            if value != "CreateTime" && value != "LogAppendTime" {
                return Err(format!(
                    "{key}={value}: must be CreateTime or LogAppendTime"
                ));
            }
        }
        "cleanup.policy" => {
            for p in value.split(',') {
                if p != "delete" && p != "compact" {
                    return Err(format!("{key}={value}: must be delete and/or compact"));
                }
            }
        }
        "max.compaction.lag.ms" => {
            if int()? < 1 {
                return Err(format!("{key}={value}: must be at least 1"));
            }
        }
        "min.cleanable.dirty.ratio" => match value.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => {}
            _ => return Err(format!("{key}={value}: must be a number in [0, 1]")),
        },
        "compression.type" => {}
        _ => return Err(format!("unknown topic config {key}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn max_compaction_lag_ms_shortens_the_roll_of_compacted_logs_only() {
        let broker = BrokerConfig::default();
        let c = log_config_for(
            &configs(&[
                ("cleanup.policy", "compact"),
                ("max.compaction.lag.ms", "60000"),
            ]),
            &broker,
        );
        assert_eq!(c.max_compaction_lag_ms, 60_000);
        assert_eq!(c.roll_ms(), 60_000);
        let d = log_config_for(&configs(&[("max.compaction.lag.ms", "60000")]), &broker);
        assert_eq!(d.roll_ms(), d.segment_ms, "delete policy: segment.ms alone");
        let default = log_config_for(&configs(&[("cleanup.policy", "compact")]), &broker);
        assert_eq!(default.max_compaction_lag_ms, i64::MAX);
        assert_eq!(default.roll_ms(), default.segment_ms);
    }

    #[test]
    fn compaction_lags_are_validated_alone_and_together() {
        assert!(validate_topic_config("max.compaction.lag.ms", "0").is_err());
        assert!(validate_topic_config("max.compaction.lag.ms", "x").is_err());
        assert!(validate_topic_config("max.compaction.lag.ms", "1").is_ok());
        let e = validate_topic_configs(&configs(&[
            ("min.compaction.lag.ms", "5000"),
            ("max.compaction.lag.ms", "1000"),
        ]))
        .unwrap_err();
        assert!(e.contains("min.compaction.lag.ms=5000"), "{e}");
        assert!(validate_topic_configs(&configs(&[("min.compaction.lag.ms", "5000")])).is_ok());
    }
}
