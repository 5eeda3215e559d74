//! Classic consumer groups (JoinGroup / SyncGroup protocol) and committed offsets.
//!
//! Each group is owned by exactly one shard, `coordinator_shard(group)`; handlers on any
//! shard reach it with `Shard::invoke_on`. The owning shard keeps the group's state in
//! its `Coordinator` (no locks: one executor touches it) and drives timeouts with a
//! glommio timer tick. Committed offsets and each group's metadata (generation,
//! members, assignments) are durable records in `__consumer_offsets` (see `store`),
//! replayed on the shard's first group request after a start (`load_groups`): a
//! stable group's members keep heartbeating into the same generation across a broker
//! restart. The metadata record is written when a rebalance completes (the leader's
//! SyncGroup is answered only once it is durable), when the group becomes Empty, when a
//! static member takes a new id, and a tombstone when the group goes away.
//! Offsets of groups without members expire after `offsets.retention.minutes`
//! (`expire_offsets`, every `offsets.retention.check.interval.ms`), by tombstones.

pub mod cluster;
pub mod state;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::shard::Shard;
pub use state::{Committed, Group, GroupState, JoinReply, JoinRequest, Step, SyncReply};

/// Kafka error codes of the group APIs are in the crate's one list.
pub use crate::kafka_error as codes;

/// offset.metadata.max.bytes: the commit metadata string is stored and replayed.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Granularity of session and rebalance timeouts.
const TICK_INTERVAL: Duration = Duration::from_millis(100);

/// Kafka's placement hash of a group id: `Utils.abs(groupId.hashCode())`, Java's
/// `String.hashCode` over UTF-16 units (`abs(i32::MIN)` is 0), so a group sits in the
/// same `__consumer_offsets` partition as on Kafka.
pub fn group_hash(group: &str) -> u32 {
    let h = group
        .encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)));
    if h == i32::MIN {
        0
    } else {
        h.unsigned_abs()
    }
}

/// The shard that coordinates `group`. A function of the id today; kept in one place so
/// it can become a table (like partition ownership) without touching the handlers.
pub fn coordinator_shard(group: &str, nshards: usize) -> usize {
    group_hash(group) as usize % nshards.max(1)
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

/// One partition of an OffsetCommit.
#[derive(Debug, Clone)]
pub struct CommitEntry {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// Per-shard coordinator state: the groups this shard owns.
pub struct Coordinator {
    groups: RefCell<HashMap<String, Group>>,
    /// Offsets replayed from `__consumer_offsets` (once per process start).
    loaded: Cell<bool>,
    load_lock: glommio::sync::Semaphore,
    /// Cluster mode: the offsets partitions whose groups this shard holds.
    cluster: cluster::Leadership,
    /// Serializes group metadata writes so that the last record in the log is the
    /// latest state (each write snapshots the group after taking it).
    store_lock: glommio::sync::Semaphore,
    /// Groups removed from memory whose metadata record still needs its tombstone.
    removed: RefCell<HashSet<String>>,
}

impl Default for Coordinator {
    fn default() -> Self {
        Self::new()
    }
}

impl Coordinator {
    /// This shard's group coordinator (installed on every shard when the broker starts).
    pub fn of(shard: &Shard) -> Rc<Coordinator> {
        shard
            .services
            .get::<Coordinator>()
            .expect("the broker installs a group coordinator on every shard")
    }

    pub fn new() -> Coordinator {
        Coordinator {
            groups: RefCell::default(),
            loaded: Cell::new(false),
            load_lock: glommio::sync::Semaphore::new(1),
            cluster: Default::default(),
            store_lock: glommio::sync::Semaphore::new(1),
            removed: RefCell::default(),
        }
    }

    /// Drops groups with nothing left to keep; the persisted ones get a tombstone.
    fn drop_dead(&self, groups: &mut HashMap<String, Group>) {
        let mut removed = self.removed.borrow_mut();
        groups.retain(|id, g| {
            if !g.is_dead() {
                return true;
            }
            if g.persisted {
                removed.insert(id.clone());
            }
            false
        });
    }

    fn needs_store(&self, group_id: &str) -> bool {
        self.groups
            .borrow()
            .get(group_id)
            .is_some_and(|g| g.store_needed)
            || self.removed.borrow().contains(group_id)
    }
}

/// Writes the group's metadata record as the group is now (or its tombstone once it
/// is gone) and waits until it is durable. Writes of one shard are serialized, and
/// each snapshots the group after its turn comes, so the log's last record for a group
/// is never older than a write that finished before.
async fn store_group(shard: &Rc<Shard>, group_id: &str) -> Result<(), i16> {
    let c = &*Coordinator::of(shard);
    let _permit = c
        .store_lock
        .acquire_permit(1)
        .await
        .map_err(|_| codes::COORDINATOR_NOT_AVAILABLE)?;
    let value = {
        let mut groups = c.groups.borrow_mut();
        match groups.get_mut(group_id) {
            Some(g) => {
                g.store_needed = false;
                match g.metadata(crate::time::now_ms()) {
                    Some(md) => Some(store::group_value(&md)),
                    // Mid-rebalance: the last stored generation stands, unless the group
                    // was removed and created again since (its old record must go).
                    None if c.removed.borrow().contains(group_id) => None,
                    None => return Ok(()),
                }
            }
            None if c.removed.borrow().contains(group_id) => None,
            None => return Ok(()),
        }
    };
    let tombstone = value.is_none();
    let result = store::append(shard, group_id, vec![(store::group_key(group_id), value)]).await;
    let mut groups = c.groups.borrow_mut();
    let group = groups.get_mut(group_id);
    match result {
        Ok(_) => {
            c.removed.borrow_mut().remove(group_id);
            if let Some(g) = group {
                g.persisted = !tombstone;
            }
            Ok(())
        }
        Err(code) => {
            tracing::warn!(group = group_id, code, "storing group metadata failed");
            // Retried by the tick, except an assignment: its SyncGroup gets the error.
            if let Some(g) = group {
                if !tombstone && g.state != GroupState::CompletingRebalance {
                    g.store_needed = true;
                }
            }
            Err(code)
        }
    }
}

/// Stores the group's metadata if a transition asked for it. Failures are logged and
/// left to the tick's retry: the calls that trigger this already took effect in memory.
async fn persist_if_needed(shard: &Rc<Shard>, group_id: &str) {
    if Coordinator::of(shard).needs_store(group_id) {
        let _ = store_group(shard, group_id).await;
    }
}

/// Loads the groups stored in the given `__consumer_offsets` partitions that `shard`
/// coordinates: committed offsets and the last metadata record of each group, which
/// come back Stable in their stored generation with fresh session timers. Groups
/// already in memory with the same id are replaced. Returns how many groups loaded.
/// Called on the shard's first group request; a broker taking over a partition's
/// coordination can call it for that partition.
pub async fn load_groups(shard: &Rc<Shard>, partitions: &[i32]) -> Result<usize, String> {
    let found = read_groups(shard, partitions).await?;
    Ok(install_groups(shard, found))
}

/// Groups read back from `__consumer_offsets`: last metadata record (if any) and the
/// committed offsets of each.
pub type StoredGroups = HashMap<String, (Option<store::GroupMetadata>, StoredOffsets)>;
pub type StoredOffsets = HashMap<(String, i32), Committed>;

/// Replays the partitions and collects the groups `shard` coordinates (no change to
/// what is in memory).
pub async fn read_groups(shard: &Rc<Shard>, partitions: &[i32]) -> Result<StoredGroups, String> {
    let mut found = StoredGroups::new();
    store::replay(shard, partitions, |(log_offset, key, value)| {
        if let Some((group, topic, partition)) = store::decode_offset_key(key.clone()) {
            if coordinator_shard(&group, shard.nshards) != shard.id {
                return;
            }
            let offsets = &mut found.entry(group).or_default().1;
            match value.and_then(store::decode_offset_value) {
                Some((offset, leader_epoch, metadata, commit_ms)) => {
                    offsets.insert(
                        (topic, partition),
                        Committed {
                            offset,
                            leader_epoch,
                            metadata,
                            commit_ms,
                            log_offset,
                        },
                    );
                }
                None => {
                    offsets.remove(&(topic, partition));
                }
            }
        } else if let Some(group) = store::decode_group_key(key) {
            if coordinator_shard(&group, shard.nshards) != shard.id {
                return;
            }
            let md = match value {
                Some(v) => match store::decode_group_value(v) {
                    Some(md) => Some(md),
                    None => {
                        tracing::warn!(group = %group, log_offset, "undecodable group metadata record skipped");
                        return;
                    }
                },
                None => None,
            };
            found.entry(group).or_default().0 = md;
        }
    })
    .await?;
    Ok(found)
}

/// Puts read groups in memory, replacing groups with the same id; restored members'
/// session timers start now. Returns how many groups there were.
pub fn install_groups(shard: &Shard, found: StoredGroups) -> usize {
    let now = Instant::now();
    let c = &*Coordinator::of(shard);
    let mut groups = c.groups.borrow_mut();
    let count = found.len();
    for (id, (md, offsets)) in found {
        let mut g = match md {
            Some(md) => Group::restore(&id, md, now),
            None => Group::new(&id),
        };
        g.offsets = offsets.into_iter().collect();
        groups.insert(id, g);
    }
    c.drop_dead(&mut groups);
    count
}

/// Makes `shard`'s coordinator usable: replays committed offsets and starts the timer
/// tick, once. Concurrent first requests wait for the one replay.
async fn ready(shard: &Rc<Shard>) -> Result<(), i16> {
    let c = &*Coordinator::of(shard);
    if c.loaded.get() {
        return Ok(());
    }
    let _permit = c
        .load_lock
        .acquire_permit(1)
        .await
        .map_err(|_| codes::COORDINATOR_NOT_AVAILABLE)?;
    if c.loaded.get() {
        return Ok(());
    }
    // In a cluster, groups load per offsets partition this broker leads (`cluster`).
    let partitions = if shard.config.cluster.is_some() {
        Vec::new()
    } else {
        store::partitions_for_shard(shard)
    };
    match load_groups(shard, &partitions).await {
        Ok(n) => tracing::info!(shard = shard.id, groups = n, "consumer groups loaded"),
        Err(e) => {
            tracing::warn!(shard = shard.id, error = %e, "loading consumer groups failed");
            return Err(codes::COORDINATOR_LOAD_IN_PROGRESS);
        }
    }
    c.loaded.set(true);
    let ticker = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(TICK_INTERVAL).await;
            let now = Instant::now();
            let now_ms = crate::time::now_ms();
            let due: Vec<String> = {
                let c = &*Coordinator::of(&ticker);
                let mut groups = c.groups.borrow_mut();
                for g in groups.values_mut() {
                    g.tick(now);
                    g.note_state_time(now_ms);
                }
                c.drop_dead(&mut groups);
                let mut due: Vec<String> = groups
                    .values()
                    .filter(|g| g.store_needed)
                    .map(|g| g.id.clone())
                    .collect();
                due.extend(c.removed.borrow().iter().cloned());
                due
            };
            // Expiries and retries of failed writes; calls write their own changes.
            for id in due {
                persist_if_needed(&ticker, &id).await;
            }
        }
    })
    .detach();
    let expirer = shard.clone();
    glommio::spawn_local(async move {
        let every = Duration::from_millis(expirer.config.offsets_retention_check_interval_ms);
        loop {
            glommio::timer::sleep(every).await;
            expire_offsets(&expirer).await;
        }
    })
    .detach();
    Ok(())
}

/// `offsets.retention.minutes` (KIP-211): writes tombstones for the committed offsets
/// `Group::expired_offsets` names, then drops groups left with nothing (their metadata
/// record gets a tombstone too), so expired offsets stay gone after a restart. A write
/// that fails is retried at the next check.
async fn expire_offsets(shard: &Rc<Shard>) {
    let retention_ms =
        i64::try_from(shard.config.offsets_retention().as_millis()).unwrap_or(i64::MAX);
    let now_ms = crate::time::now_ms();
    let due: Vec<(String, Vec<(String, i32)>)> = {
        let coordinator = Coordinator::of(shard);
        let mut groups = coordinator.groups.borrow_mut();
        groups
            .values_mut()
            .filter_map(|g| {
                g.note_state_time(now_ms);
                let keys = g.expired_offsets(now_ms, retention_ms);
                (!keys.is_empty()).then(|| (g.id.clone(), keys))
            })
            .collect()
    };
    for (group_id, keys) in due {
        let records = keys
            .iter()
            .map(|(t, p)| (store::offset_key(&group_id, t, *p), None))
            .collect();
        let tombstone_last = match store::append(shard, &group_id, records).await {
            Ok(base) => base + keys.len() as i64 - 1,
            Err(code) => {
                tracing::warn!(group = %group_id, code, "expiring committed offsets failed; retried at the next check");
                continue;
            }
        };
        {
            let c = &*Coordinator::of(shard);
            let mut groups = c.groups.borrow_mut();
            if let Some(g) = groups.get_mut(&group_id) {
                for key in &keys {
                    // A commit that landed after the tombstone survives it, as on replay.
                    if g.offsets
                        .get(key)
                        .is_some_and(|c| c.log_offset <= tombstone_last)
                    {
                        g.offsets.remove(key);
                    }
                }
            }
            c.drop_dead(&mut groups);
        }
        tracing::info!(
            group = %group_id,
            offsets = keys.len(),
            "committed offsets expired (offsets.retention.minutes)"
        );
        // The metadata tombstone of a group that is gone now.
        persist_if_needed(shard, &group_id).await;
    }
}

/// JoinGroup on the owning shard; waits for the join phase when the member must.
pub async fn join(shard: &Rc<Shard>, group_id: String, req: JoinRequest) -> JoinReply {
    let member_id = req.member_id.clone();
    if let Err(code) = ready(shard).await {
        return JoinReply::error(code, &member_id);
    }
    let step = {
        let coordinator = Coordinator::of(shard);
        let mut groups = coordinator.groups.borrow_mut();
        let g = groups
            .entry(group_id.clone())
            .or_insert_with(|| Group::new(&group_id));
        g.initial_rebalance_delay =
            Duration::from_millis(shard.config.group_initial_rebalance_delay_ms);
        g.join(req, Instant::now())
    };
    persist_if_needed(shard, &group_id).await;
    match step {
        Step::Reply(r) => r,
        // Every parked join is answered by the state machine; a dropped sender means the
        // group went away under it.
        Step::Wait(rx) => rx
            .await
            .unwrap_or_else(|_| JoinReply::error(codes::COORDINATOR_NOT_AVAILABLE, &member_id)),
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn sync(
    shard: &Rc<Shard>,
    group_id: String,
    member_id: String,
    instance_id: Option<String>,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    assignments: Vec<(String, Bytes)>,
) -> SyncReply {
    if let Err(code) = ready(shard).await {
        return SyncReply::error(code);
    }
    let (step, store) = {
        let coordinator = Coordinator::of(shard);
        let mut groups = coordinator.groups.borrow_mut();
        match groups.get_mut(&group_id) {
            None => (
                Step::Reply(SyncReply::error(codes::UNKNOWN_MEMBER_ID)),
                false,
            ),
            Some(g) => {
                let step = g.sync(
                    &member_id,
                    instance_id.as_deref(),
                    generation,
                    protocol_type.as_deref(),
                    protocol_name.as_deref(),
                    assignments,
                    Instant::now(),
                );
                (step, g.store_needed)
            }
        }
    };
    if store {
        // The leader's assignment: durable before anyone gets it.
        let result = store_group(shard, &group_id).await;
        if let Some(g) = Coordinator::of(shard)
            .groups
            .borrow_mut()
            .get_mut(&group_id)
        {
            g.assignment_stored(generation, result, Instant::now());
        }
    }
    match step {
        Step::Reply(r) => r,
        Step::Wait(rx) => rx
            .await
            .unwrap_or_else(|_| SyncReply::error(codes::COORDINATOR_NOT_AVAILABLE)),
    }
}

pub async fn heartbeat(
    shard: &Rc<Shard>,
    group_id: String,
    member_id: String,
    instance_id: Option<String>,
    generation: i32,
) -> i16 {
    if let Err(code) = ready(shard).await {
        return code;
    }
    let coordinator = Coordinator::of(shard);
    let mut groups = coordinator.groups.borrow_mut();
    match groups.get_mut(&group_id) {
        None => codes::UNKNOWN_MEMBER_ID,
        Some(g) => g.heartbeat(
            &member_id,
            instance_id.as_deref(),
            generation,
            Instant::now(),
        ),
    }
}

/// LeaveGroup for several members. `Err` is a group-level error.
pub async fn leave(
    shard: &Rc<Shard>,
    group_id: String,
    members: Vec<(String, Option<String>)>,
) -> Result<Vec<i16>, i16> {
    ready(shard).await?;
    let results = {
        let c = &*Coordinator::of(shard);
        let mut groups = c.groups.borrow_mut();
        let Some(g) = groups.get_mut(&group_id) else {
            return Ok(vec![codes::UNKNOWN_MEMBER_ID; members.len()]);
        };
        let results: Vec<i16> = members
            .iter()
            .map(|(id, instance)| g.leave(id, instance.as_deref()))
            .collect();
        if results.contains(&codes::NONE) {
            g.members_changed(Instant::now());
        }
        c.drop_dead(&mut groups);
        results
    };
    persist_if_needed(shard, &group_id).await;
    Ok(results)
}

/// OffsetCommit: checks membership, then writes the offsets durably before they count.
/// Returns one error code per entry, in order.
pub async fn commit(
    shard: &Rc<Shard>,
    group_id: String,
    member_id: String,
    instance_id: Option<String>,
    generation: i32,
    entries: Vec<CommitEntry>,
) -> Vec<i16> {
    let n = entries.len();
    if let Err(code) = ready(shard).await {
        return vec![code; n];
    }
    let code = {
        let coordinator = Coordinator::of(shard);
        let mut groups = coordinator.groups.borrow_mut();
        let code = match groups.get_mut(&group_id) {
            Some(g) => g.check_commit(
                &member_id,
                instance_id.as_deref(),
                generation,
                Instant::now(),
            ),
            // Offsets of a group that only uses the broker for storage (manual assign).
            None if generation < 0 => {
                groups.insert(group_id.clone(), Group::new(&group_id));
                codes::NONE
            }
            None => codes::ILLEGAL_GENERATION,
        };
        if code == codes::NONE {
            if let Some(g) = groups.get_mut(&group_id) {
                g.commits_in_flight += 1;
            }
        }
        code
    };
    if code != codes::NONE {
        return vec![code; n];
    }
    let _in_flight = InFlightCommit {
        shard,
        group_id: &group_id,
    };
    commit_checked(shard, &group_id, &entries).await
}

/// Counts a checked commit on its group (`Group::commits_in_flight`) until dropped:
/// when it is written, failed, or abandoned with its connection mid-write.
struct InFlightCommit<'a> {
    shard: &'a Rc<Shard>,
    group_id: &'a str,
}

impl Drop for InFlightCommit<'_> {
    fn drop(&mut self) {
        let c = &*Coordinator::of(self.shard);
        let mut groups = c.groups.borrow_mut();
        if let Some(g) = groups.get_mut(self.group_id) {
            g.commits_in_flight = g.commits_in_flight.saturating_sub(1);
        }
        c.drop_dead(&mut groups);
    }
}

/// The write of a commit that passed its checks: offsets go to `__consumer_offsets`
/// and count in memory once durable.
async fn commit_checked(shard: &Rc<Shard>, group_id: &str, entries: &[CommitEntry]) -> Vec<i16> {
    let n = entries.len();
    let mut results = vec![codes::NONE; n];
    let mut records = Vec::new();
    let mut written = Vec::new();
    let now_ms = crate::time::now_ms();
    for (i, e) in entries.iter().enumerate() {
        let metadata = e.metadata.as_deref().unwrap_or("");
        if metadata.len() > OFFSET_METADATA_BYTES_MAX {
            results[i] = codes::OFFSET_METADATA_TOO_LARGE;
            continue;
        }
        records.push((
            store::offset_key(group_id, &e.topic, e.partition),
            Some(store::offset_value(
                e.offset,
                e.leader_epoch,
                metadata,
                now_ms,
            )),
        ));
        written.push(i);
    }
    if records.is_empty() {
        return results;
    }
    match store::append(shard, group_id, records).await {
        Ok(base) => {
            let coordinator = Coordinator::of(shard);
            let mut groups = coordinator.groups.borrow_mut();
            let g = groups
                .entry(group_id.to_string())
                .or_insert_with(|| Group::new(group_id));
            for (k, &i) in written.iter().enumerate() {
                let e = &entries[i];
                let log_offset = base + k as i64;
                let newer = g
                    .offsets
                    .get(&(e.topic.clone(), e.partition))
                    .is_none_or(|c| c.log_offset < log_offset);
                if newer {
                    g.offsets.insert(
                        (e.topic.clone(), e.partition),
                        Committed {
                            offset: e.offset,
                            leader_epoch: e.leader_epoch,
                            metadata: e.metadata.clone().unwrap_or_default(),
                            commit_ms: now_ms,
                            log_offset,
                        },
                    );
                }
            }
        }
        Err(code) => {
            for i in written {
                results[i] = code;
            }
        }
    }
    results
}

/// Topics named in a consumer-protocol subscription (`ConsumerProtocolSubscription`,
/// any version: they all start with `i16 version, [string] topics`). `None` if the
/// metadata does not parse.
fn subscribed_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut b = metadata;
    let take = |b: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head.to_vec())
    };
    take(&mut b, 2)?; // version
    let count = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
    let mut topics = Vec::new();
    for _ in 0..count.max(0) {
        let len = i16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
        topics.push(String::from_utf8(take(&mut b, len.max(0) as usize)?).ok()?);
    }
    Some(topics)
}

/// OffsetDelete (KIP-496): removes a group's committed offsets of the given partitions.
/// Refused for topics the group's members subscribe to (GROUP_SUBSCRIBED_TO_TOPIC per
/// partition); a group with members whose subscriptions cannot be read (not the
/// "consumer" protocol) is refused whole with NON_EMPTY_GROUP. Returns the top-level
/// error, or a code per requested partition in order.
pub async fn delete_offsets(
    shard: &Rc<Shard>,
    group_id: String,
    partitions: Vec<(String, i32)>,
) -> Result<Vec<i16>, i16> {
    ready(shard).await?;
    let (codes_out, doomed) = {
        let coordinator = Coordinator::of(shard);
        let groups = coordinator.groups.borrow();
        let Some(g) = groups.get(&group_id) else {
            return Err(codes::GROUP_ID_NOT_FOUND);
        };
        let subscribed: Option<std::collections::HashSet<String>> = if g.members.is_empty() {
            Some(Default::default())
        } else if g.protocol_type.as_deref() == Some("consumer") {
            let protocol = g.protocol.clone().unwrap_or_default();
            let mut all = std::collections::HashSet::new();
            for m in g.members.values() {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol || protocol.is_empty())
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default();
                match subscribed_topics(&meta) {
                    Some(t) => all.extend(t),
                    None => return Err(codes::NON_EMPTY_GROUP),
                }
            }
            Some(all)
        } else {
            None
        };
        let Some(subscribed) = subscribed else {
            return Err(codes::NON_EMPTY_GROUP);
        };
        let mut out = Vec::with_capacity(partitions.len());
        let mut doomed = Vec::new();
        for (t, p) in &partitions {
            if subscribed.contains(t) {
                out.push(codes::GROUP_SUBSCRIBED_TO_TOPIC);
            } else {
                out.push(codes::NONE);
                if g.offsets.contains_key(&(t.clone(), *p)) && !doomed.contains(&(t.clone(), *p)) {
                    doomed.push((t.clone(), *p));
                }
            }
        }
        (out, doomed)
    };
    if doomed.is_empty() {
        return Ok(codes_out);
    }
    let records = doomed
        .iter()
        .map(|(t, p)| (store::offset_key(&group_id, t, *p), None))
        .collect();
    let base = store::append(shard, &group_id, records).await?;
    let tombstone_last = base + doomed.len() as i64 - 1;
    {
        let c = &*Coordinator::of(shard);
        let mut groups = c.groups.borrow_mut();
        if let Some(g) = groups.get_mut(&group_id) {
            for key in &doomed {
                // A commit that landed after the tombstone survives it, as on replay.
                if g.offsets
                    .get(key)
                    .is_some_and(|c| c.log_offset <= tombstone_last)
                {
                    g.offsets.remove(key);
                }
            }
        }
        c.drop_dead(&mut groups);
    }
    persist_if_needed(shard, &group_id).await;
    Ok(codes_out)
}

/// Committed offsets of a group: of the listed partitions, or all when `topics` is
/// `None`. A partition without a commit has `None`.
pub async fn fetch_offsets(
    shard: &Rc<Shard>,
    group_id: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<(String, i32, Option<Committed>)>, i16> {
    ready(shard).await?;
    let coordinator = Coordinator::of(shard);
    let groups = coordinator.groups.borrow();
    let g = groups.get(&group_id);
    Ok(match topics {
        None => g
            .map(|g| {
                g.offsets
                    .iter()
                    .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                    .collect()
            })
            .unwrap_or_default(),
        Some(topics) => topics
            .into_iter()
            .flat_map(|(t, parts)| {
                parts.into_iter().map(move |p| {
                    let c = g.and_then(|g| g.offsets.get(&(t.clone(), p)).cloned());
                    (t.clone(), p, c)
                })
            })
            .collect(),
    })
}

/// (group id, protocol type, state) of this shard's groups.
pub async fn list(shard: &Rc<Shard>) -> Result<Vec<(String, String, &'static str)>, i16> {
    ready(shard).await?;
    Ok(Coordinator::of(shard)
        .groups
        .borrow()
        .values()
        .map(|g| {
            (
                g.id.clone(),
                g.protocol_type.clone().unwrap_or_default(),
                g.state.name(),
            )
        })
        .collect())
}

pub async fn describe(shard: &Rc<Shard>, group_id: String) -> Result<Option<GroupSummary>, i16> {
    ready(shard).await?;
    let coordinator = Coordinator::of(shard);
    let groups = coordinator.groups.borrow();
    let Some(g) = groups.get(&group_id) else {
        return Ok(None);
    };
    let protocol = g.protocol.clone().unwrap_or_default();
    // Like Kafka: metadata and assignments only once the group is stable.
    let stable = g.state == GroupState::Stable;
    Ok(Some(GroupSummary {
        state: g.state.name(),
        protocol_type: g.protocol_type.clone().unwrap_or_default(),
        protocol: if stable {
            protocol.clone()
        } else {
            String::new()
        },
        members: g
            .members
            .values()
            .map(|m| {
                let metadata = if stable {
                    m.protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default()
                } else {
                    Bytes::new()
                };
                let assignment = if stable {
                    m.assignment.clone()
                } else {
                    Bytes::new()
                };
                (
                    m.id.clone(),
                    m.instance_id.clone(),
                    m.client_id.clone(),
                    m.client_host.clone(),
                    metadata,
                    assignment,
                )
            })
            .collect(),
    }))
}

/// DeleteGroups for one group: only an empty group can go; its offsets are deleted by
/// tombstones in `__consumer_offsets`.
pub async fn delete(shard: &Rc<Shard>, group_id: String) -> i16 {
    if let Err(code) = ready(shard).await {
        return code;
    }
    let keys: Vec<(String, i32)> = {
        let coordinator = Coordinator::of(shard);
        let groups = coordinator.groups.borrow();
        let Some(g) = groups.get(&group_id) else {
            return codes::GROUP_ID_NOT_FOUND;
        };
        if !g.members.is_empty() || g.state != GroupState::Empty {
            return codes::NON_EMPTY_GROUP;
        }
        g.offsets.keys().cloned().collect()
    };
    let mut tombstone_last = i64::MIN;
    if !keys.is_empty() {
        let records = keys
            .iter()
            .map(|(t, p)| (store::offset_key(&group_id, t, *p), None))
            .collect();
        match store::append(shard, &group_id, records).await {
            Ok(base) => tombstone_last = base + keys.len() as i64 - 1,
            Err(code) => return code,
        }
    }
    {
        let c = &*Coordinator::of(shard);
        let mut groups = c.groups.borrow_mut();
        if let Some(g) = groups.get_mut(&group_id) {
            // A commit that landed after the tombstones survives them, as on replay.
            g.offsets.retain(|_, c| c.log_offset > tombstone_last);
        }
        c.drop_dead(&mut groups);
    }
    // The group's metadata record goes too (a tombstone), before DeleteGroups answers.
    if Coordinator::of(shard).needs_store(&group_id) {
        if let Err(code) = store_group(shard, &group_id).await {
            return code;
        }
    }
    codes::NONE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_placement_is_kafkas_java_string_hash() {
        // Values from Java: s.hashCode(), and Utils.abs(h) % 50 as Kafka places groups.
        for (group, hash, partition) in [
            ("hello", 99_162_322, 22),
            ("my-group", 1_906_497_762, 12),
            ("console-consumer-12345", 158_455_506, 6),
            ("\u{1F600}grp", 1_276_929_186, 36),
            // hashCode() == Integer.MIN_VALUE: Kafka's Utils.abs gives 0.
            ("polygenelubricants", 0, 0),
        ] {
            assert_eq!(group_hash(group), hash, "{group}");
            assert_eq!(store::partition_for(group, 50), partition, "{group}");
        }
    }
}
