//! Classic consumer groups (JoinGroup / SyncGroup protocol) and committed offsets.
//!
//! Each group is owned by exactly one shard, `coordinator_shard(group)`; handlers on any
//! shard reach it with `Shard::invoke_on`. The owning shard keeps the group's state in
//! its `Coordinator` (no locks: one executor touches it) and drives timeouts with a
//! glommio timer tick. Committed offsets are durable records in `__consumer_offsets`
//! (see `store`), replayed on the shard's first group request after a start. Group
//! membership itself is in memory only: after a restart members simply rejoin.

pub mod cluster;
pub mod state;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::shard::Shard;
pub use state::{Committed, Group, GroupState, JoinReply, JoinRequest, Step, SyncReply};

/// Kafka error codes of the group APIs (values from the Kafka protocol guide).
pub mod codes {
    pub use crate::net::error_code::{
        COORDINATOR_NOT_AVAILABLE, INVALID_REQUEST, NONE, UNKNOWN_SERVER_ERROR,
    };
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
}

/// offset.metadata.max.bytes: the commit metadata string is stored and replayed.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Granularity of session and rebalance timeouts.
const TICK_INTERVAL: Duration = Duration::from_millis(100);

/// Stable hash of a group id (CRC32C: same value on every core, every run).
pub fn group_hash(group: &str) -> u32 {
    crc32c::crc32c(group.as_bytes())
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
}

impl Default for Coordinator {
    fn default() -> Self {
        Self::new()
    }
}

impl Coordinator {
    pub fn new() -> Coordinator {
        Coordinator {
            groups: RefCell::default(),
            loaded: Cell::new(false),
            load_lock: glommio::sync::Semaphore::new(1),
            cluster: Default::default(),
        }
    }
}

/// Makes `shard`'s coordinator usable: replays committed offsets and starts the timer
/// tick, once. Concurrent first requests wait for the one replay.
async fn ready(shard: &Rc<Shard>) -> Result<(), i16> {
    let c = &shard.groups;
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
    let mut records = Vec::new();
    // In a cluster, groups load per offsets partition this broker leads (`cluster`).
    let partitions = if shard.config.cluster.is_some() {
        Vec::new()
    } else {
        store::partitions_for_shard(shard)
    };
    if let Err(e) = store::replay(shard, &partitions, |r| records.push(r)).await {
        tracing::warn!(shard = shard.id, error = %e, "replaying committed offsets failed");
        return Err(codes::COORDINATOR_LOAD_IN_PROGRESS);
    }
    let mut loaded = 0usize;
    {
        let mut groups = c.groups.borrow_mut();
        for (log_offset, key, value) in records {
            let Some((group, topic, partition)) = store::decode_offset_key(key) else {
                continue;
            };
            if coordinator_shard(&group, shard.nshards) != shard.id {
                continue;
            }
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(&group));
            match value.and_then(store::decode_offset_value) {
                Some((offset, leader_epoch, metadata, commit_ms)) => {
                    g.offsets.insert(
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
                    g.offsets.remove(&(topic, partition));
                }
            }
            loaded += 1;
        }
        groups.retain(|_, g| !g.is_dead());
    }
    tracing::info!(
        shard = shard.id,
        records = loaded,
        "committed offsets loaded"
    );
    c.loaded.set(true);
    let ticker = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(TICK_INTERVAL).await;
            let now = Instant::now();
            let mut groups = ticker.groups.groups.borrow_mut();
            for g in groups.values_mut() {
                g.tick(now);
            }
            groups.retain(|_, g| !g.is_dead());
        }
    })
    .detach();
    Ok(())
}

/// JoinGroup on the owning shard; waits for the join phase when the member must.
pub async fn join(shard: &Rc<Shard>, group_id: String, req: JoinRequest) -> JoinReply {
    let member_id = req.member_id.clone();
    if let Err(code) = ready(shard).await {
        return JoinReply::error(code, &member_id);
    }
    let step = {
        let mut groups = shard.groups.groups.borrow_mut();
        let g = groups
            .entry(group_id.clone())
            .or_insert_with(|| Group::new(&group_id));
        g.initial_rebalance_delay =
            Duration::from_millis(shard.config.group_initial_rebalance_delay_ms);
        g.join(req, Instant::now())
    };
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
    let step = {
        let mut groups = shard.groups.groups.borrow_mut();
        match groups.get_mut(&group_id) {
            None => Step::Reply(SyncReply::error(codes::UNKNOWN_MEMBER_ID)),
            Some(g) => g.sync(
                &member_id,
                instance_id.as_deref(),
                generation,
                protocol_type.as_deref(),
                protocol_name.as_deref(),
                assignments,
                Instant::now(),
            ),
        }
    };
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
    let mut groups = shard.groups.groups.borrow_mut();
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
    let mut groups = shard.groups.groups.borrow_mut();
    let Some(g) = groups.get_mut(&group_id) else {
        return Ok(vec![codes::UNKNOWN_MEMBER_ID; members.len()]);
    };
    let results: Vec<i16> = members
        .iter()
        .map(|(id, instance)| g.leave(id, instance.as_deref()))
        .collect();
    if results.iter().any(|c| *c == codes::NONE) {
        g.members_changed(Instant::now());
    }
    if g.is_dead() {
        groups.remove(&group_id);
    }
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
        let mut groups = shard.groups.groups.borrow_mut();
        match groups.get_mut(&group_id) {
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
        }
    };
    if code != codes::NONE {
        return vec![code; n];
    }
    let mut results = vec![codes::NONE; n];
    let mut records = Vec::new();
    let mut written = Vec::new();
    let now_ms = crate::now_ms();
    for (i, e) in entries.iter().enumerate() {
        let metadata = e.metadata.as_deref().unwrap_or("");
        if metadata.len() > OFFSET_METADATA_BYTES_MAX {
            results[i] = codes::OFFSET_METADATA_TOO_LARGE;
            continue;
        }
        records.push((
            store::offset_key(&group_id, &e.topic, e.partition),
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
    match store::append(shard, &group_id, records).await {
        Ok(base) => {
            let mut groups = shard.groups.groups.borrow_mut();
            let g = groups
                .entry(group_id.clone())
                .or_insert_with(|| Group::new(&group_id));
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
        let groups = shard.groups.groups.borrow();
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
    let mut groups = shard.groups.groups.borrow_mut();
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
        if g.is_dead() && g.state == GroupState::Empty {
            groups.remove(&group_id);
        }
    }
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
    let groups = shard.groups.groups.borrow();
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
    Ok(shard
        .groups
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
    let groups = shard.groups.groups.borrow();
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
        let groups = shard.groups.groups.borrow();
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
    let mut groups = shard.groups.groups.borrow_mut();
    if let Some(g) = groups.get_mut(&group_id) {
        // A commit that landed after the tombstones survives them, as on replay.
        g.offsets.retain(|_, c| c.log_offset > tombstone_last);
        if g.is_dead() {
            groups.remove(&group_id);
        }
    }
    codes::NONE
}
