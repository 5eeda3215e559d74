//! One classic consumer group as its coordinator shard holds it: members, generation,
//! the rebalance state machine (Kafka's `GroupMetadata` + `GroupCoordinator`), and the
//! committed offsets. Pure state: no I/O and no awaiting in here. Calls that must wait
//! for other members (JoinGroup, SyncGroup) get a oneshot receiver that the transition
//! completing the phase answers. Lives on exactly one shard; never `Send`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use indexmap::IndexMap;

use super::codes;
use super::store::{GroupMetadata, MemberMetadata};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// No members (possibly committed offsets).
    Empty,
    /// Waiting for every known member to (re)join, up to the rebalance timeout.
    PreparingRebalance,
    /// Join answered; waiting for the leader's SyncGroup with the assignment.
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The names DescribeGroups and ListGroups report (Kafka's spelling).
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct JoinReply {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only for the leader: (member id, group instance id, metadata of the chosen protocol).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinReply {
    pub fn error(code: i16, member_id: &str) -> Self {
        JoinReply {
            error: code,
            generation: -1,
            member_id: member_id.to_string(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncReply {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncReply {
    pub fn error(code: i16) -> Self {
        SyncReply {
            error: code,
            ..Default::default()
        }
    }
}

pub enum Step<T> {
    Reply(T),
    Wait(oneshot::Receiver<T>),
}

pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// (protocol name, subscription metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    /// Session expiry: pushed forward by every heartbeat, commit, join and sync.
    pub expires: Instant,
    join_tx: Option<oneshot::Sender<JoinReply>>,
    sync_tx: Option<oneshot::Sender<SyncReply>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(n, _)| n == protocol)
    }
}

/// A committed offset and where its record sits in `__consumer_offsets`.
#[derive(Clone, Debug)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_ms: i64,
    /// Offset of the record in `__consumer_offsets`: of two writes to one key the later
    /// record wins, in memory exactly as on replay.
    pub log_offset: i64,
}

pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// KIP-394 (JoinGroup v4+): a member without an id gets one with MEMBER_ID_REQUIRED
    /// and must join again with it, so the group never holds ids nobody knows.
    pub require_known_member_id: bool,
}

pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// Insertion order: the first member becomes leader when there is none.
    pub members: IndexMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet used, with their expiry.
    pub pending: HashMap<String, Instant>,
    /// group.instance.id → member id of static members.
    pub statics: HashMap<String, String>,
    /// End of the current rebalance phase (join or sync), when one is running.
    pub phase_deadline: Option<Instant>,
    pub offsets: BTreeMap<(String, i32), Committed>,
    /// group.initial.rebalance.delay.ms: the first join phase of an empty group lasts
    /// at least this long (each new member extends it, up to the rebalance timeout),
    /// so members starting together land in one generation instead of many.
    pub initial_rebalance_delay: std::time::Duration,
    /// The join phase may not complete before this (the initial delay).
    join_not_before: Option<Instant>,
    /// A transition happened that the group's metadata record must reflect: the caller
    /// (or the timer tick) writes `metadata()` to `__consumer_offsets`.
    pub store_needed: bool,
    /// The leader's assignment for this generation is set on the members but the group
    /// only becomes Stable (and answers SyncGroup) once its record is durable.
    awaiting_store: Option<i32>,
    /// A metadata record of this group is in the log and not tombstoned.
    pub persisted: bool,
    /// Wall clock (ms) since which the group is Empty (Kafka's current state
    /// timestamp), kept by `note_state_time` and stored with the group's metadata so
    /// that offsets retention counts across restarts. `None` when not Empty or unknown.
    pub empty_since_ms: Option<i64>,
    /// OffsetCommits between their check and their write: their offsets are not
    /// expired, and the group is not dropped, under them.
    pub commits_in_flight: u32,
}

impl Group {
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: IndexMap::new(),
            pending: HashMap::new(),
            statics: HashMap::new(),
            phase_deadline: None,
            offsets: BTreeMap::new(),
            initial_rebalance_delay: std::time::Duration::ZERO,
            join_not_before: None,
            store_needed: false,
            awaiting_store: None,
            persisted: false,
            empty_since_ms: None,
            commits_in_flight: 0,
        }
    }

    /// A group as its last metadata record left it (broker start, or a coordinator
    /// taking over the partition). Members are Stable in the stored generation with
    /// fresh session timers: they keep heartbeating without a rebalance, and the ones
    /// that died with the broker expire after their session timeout.
    pub fn restore(id: &str, md: GroupMetadata, now: Instant) -> Group {
        let mut g = Group::new(id);
        g.generation = md.generation;
        g.persisted = true;
        if !md.protocol_type.is_empty() {
            g.protocol_type = Some(md.protocol_type);
        }
        let Some(protocol) = md.protocol.filter(|_| !md.members.is_empty()) else {
            // Stored Empty: it has been since the record's state timestamp.
            g.empty_since_ms = (md.state_ms > 0).then_some(md.state_ms);
            return g;
        };
        let ms = |v: i32| Duration::from_millis(v.max(0) as u64);
        for m in md.members {
            if let Some(instance) = &m.instance_id {
                g.statics.insert(instance.clone(), m.member_id.clone());
            }
            let session_timeout = ms(m.session_timeout_ms);
            g.members.insert(
                m.member_id.clone(),
                Member {
                    id: m.member_id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout,
                    rebalance_timeout: ms(m.rebalance_timeout_ms),
                    // Only the chosen protocol is stored (as Kafka does): a member that
                    // joins later must support it.
                    protocols: vec![(protocol.clone(), m.subscription)],
                    assignment: m.assignment,
                    expires: now + session_timeout,
                    join_tx: None,
                    sync_tx: None,
                },
            );
        }
        g.leader = md
            .leader
            .filter(|l| g.members.contains_key(l))
            .or_else(|| g.members.keys().next().cloned());
        g.protocol = Some(protocol);
        g.state = GroupState::Stable;
        g
    }

    /// The record to store for the group as it is now: the generation with every
    /// member's assignment once the leader has synced, no members once Empty. `None`
    /// in the middle of a rebalance: the last stored generation stands until the next
    /// one completes.
    pub fn metadata(&self, now_ms: i64) -> Option<GroupMetadata> {
        let with_members = match self.state {
            GroupState::Stable => true,
            GroupState::CompletingRebalance if self.awaiting_store == Some(self.generation) => true,
            GroupState::Empty => false,
            GroupState::CompletingRebalance | GroupState::PreparingRebalance => return None,
        };
        let protocol = self.protocol.clone().unwrap_or_default();
        let ms = |d: Duration| d.as_millis().min(i32::MAX as u128) as i32;
        Some(GroupMetadata {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone().filter(|_| with_members),
            leader: self.leader.clone().filter(|_| with_members),
            state_ms: match self.state {
                GroupState::Empty => self.empty_since_ms.unwrap_or(now_ms),
                _ => now_ms,
            },
            members: if with_members {
                self.members
                    .values()
                    .map(|m| MemberMetadata {
                        member_id: m.id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        rebalance_timeout_ms: ms(m.rebalance_timeout),
                        session_timeout_ms: ms(m.session_timeout),
                        subscription: m.metadata_for(&protocol),
                        assignment: m.assignment.clone(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        })
    }

    /// The write of the leader's assignment for `generation` finished. On success the
    /// group becomes Stable and every member waiting in SyncGroup gets its assignment;
    /// on failure they get the error and the group rebalances (Kafka's rule: an
    /// assignment that is not durable is not handed out). Ignored if the group moved on
    /// meanwhile (a member left or joined: they were told to rejoin).
    pub fn assignment_stored(&mut self, generation: i32, result: Result<(), i16>, now: Instant) {
        if self.state != GroupState::CompletingRebalance
            || self.generation != generation
            || self.awaiting_store != Some(generation)
        {
            return;
        }
        self.awaiting_store = None;
        match result {
            Ok(()) => {
                self.state = GroupState::Stable;
                self.phase_deadline = None;
                let replies: Vec<(String, Bytes)> = self
                    .members
                    .values()
                    .map(|m| (m.id.clone(), m.assignment.clone()))
                    .collect();
                for (id, a) in replies {
                    let reply = self.sync_reply(a);
                    if let Some(tx) = self.members.get_mut(&id).and_then(|m| m.sync_tx.take()) {
                        let _ = tx.send(reply);
                    }
                }
            }
            Err(code) => {
                for m in self.members.values_mut() {
                    m.assignment = Bytes::new();
                    if let Some(tx) = m.sync_tx.take() {
                        let _ = tx.send(SyncReply::error(code));
                    }
                }
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
            }
        }
    }

    /// Nothing left worth keeping: no members, no pending ids, no offsets, no commit
    /// on its way.
    pub fn is_dead(&self) -> bool {
        self.members.is_empty()
            && self.pending.is_empty()
            && self.offsets.is_empty()
            && self.commits_in_flight == 0
    }

    /// Keeps `empty_since_ms` in step with the state: set the first time the group is
    /// seen Empty, cleared once it is not. Called by the coordinator's timer tick (the
    /// state machine itself reads no wall clock), so it lags the transition by a tick.
    pub fn note_state_time(&mut self, now_ms: i64) {
        if self.state == GroupState::Empty {
            self.empty_since_ms.get_or_insert(now_ms);
        } else {
            self.empty_since_ms = None;
        }
    }

    /// Committed offsets that `offsets.retention` has expired at `now_ms` (KIP-211): all
    /// of an Empty group's once it has been Empty that long; for a group that never
    /// had members (offsets storage only, no protocol type) or whose Empty time is
    /// unknown, each offset that long after its commit. A group with members keeps its
    /// offsets, and none expire while a commit is in flight.
    pub fn expired_offsets(&self, now_ms: i64, retention_ms: i64) -> Vec<(String, i32)> {
        if self.state != GroupState::Empty || !self.members.is_empty() || self.commits_in_flight > 0
        {
            return Vec::new();
        }
        let old = |since_ms: i64| now_ms.saturating_sub(since_ms) >= retention_ms;
        match self.empty_since_ms.filter(|_| self.protocol_type.is_some()) {
            Some(since) if old(since) => self.offsets.keys().cloned().collect(),
            Some(_) => Vec::new(),
            None => self
                .offsets
                .iter()
                .filter(|(_, c)| old(c.commit_ms))
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }

    /// Whether a member offering `protocols` can be in this group with everyone else
    /// (`except` leaves out the member itself when it rejoins).
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)], except: &str) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        let others: Vec<&Member> = self.members.values().filter(|m| m.id != except).collect();
        if others.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols
            .iter()
            .any(|(name, _)| others.iter().all(|m| m.supports(name)))
    }

    pub fn join(&mut self, req: JoinRequest, now: Instant) -> Step<JoinReply> {
        if !self.supports(&req.protocol_type, &req.protocols, &req.member_id) {
            return Step::Reply(JoinReply::error(
                codes::INCONSISTENT_GROUP_PROTOCOL,
                &req.member_id,
            ));
        }
        if req.member_id.is_empty() {
            if let Some(instance) = &req.instance_id {
                if let Some(old) = self.statics.get(instance).cloned() {
                    return self.replace_static(old, req, now);
                }
            }
            let id = format!(
                "{}-{}",
                req.client_id,
                uuid::Uuid::from_u128(rand::random::<u128>())
            );
            if req.require_known_member_id && req.instance_id.is_none() {
                // The id must come back within a session, or it is forgotten.
                self.pending.insert(id.clone(), now + req.session_timeout);
                return Step::Reply(JoinReply::error(codes::MEMBER_ID_REQUIRED, &id));
            }
            return self.add_member(id, req, now);
        }
        if let Some(instance) = &req.instance_id {
            if let Some(known) = self.statics.get(instance) {
                if *known != req.member_id {
                    return Step::Reply(JoinReply::error(
                        codes::FENCED_INSTANCE_ID,
                        &req.member_id,
                    ));
                }
            }
        }
        if !self.members.contains_key(&req.member_id) {
            if self.pending.remove(&req.member_id).is_some() {
                let id = req.member_id.clone();
                return self.add_member(id, req, now);
            }
            return Step::Reply(JoinReply::error(codes::UNKNOWN_MEMBER_ID, &req.member_id));
        }
        self.rejoin(req, now)
    }

    fn add_member(&mut self, id: String, req: JoinRequest, now: Instant) -> Step<JoinReply> {
        let (tx, rx) = oneshot::channel();
        if let Some(instance) = &req.instance_id {
            self.statics.insert(instance.clone(), id.clone());
        }
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        self.members.insert(
            id.clone(),
            Member {
                id,
                instance_id: req.instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                protocols: req.protocols,
                assignment: Bytes::new(),
                expires: now + req.session_timeout,
                join_tx: Some(tx),
                sync_tx: None,
            },
        );
        let was_empty = self.state == GroupState::Empty;
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        let delay = self.initial_rebalance_delay;
        let waiting = self.join_not_before.is_some_and(|t| t > now);
        if !delay.is_zero() && (was_empty || waiting) {
            let until = now + delay;
            self.join_not_before = Some(self.phase_deadline.map_or(until, |d| until.min(d)));
        }
        self.maybe_complete_join(now);
        Step::Wait(rx)
    }

    /// A static member came back without its member id (restart): it takes over its old
    /// identity under a fresh id; the old id is fenced.
    fn replace_static(&mut self, old: String, req: JoinRequest, now: Instant) -> Step<JoinReply> {
        let Some(mut member) = self.members.shift_remove(&old) else {
            // Invariant: `statics` only names current members.
            unreachable!("static member {old} missing from the group");
        };
        if let Some(tx) = member.join_tx.take() {
            let _ = tx.send(JoinReply::error(codes::FENCED_INSTANCE_ID, &old));
        }
        if let Some(tx) = member.sync_tx.take() {
            let _ = tx.send(SyncReply::error(codes::FENCED_INSTANCE_ID));
        }
        let id = format!(
            "{}-{}",
            req.client_id,
            uuid::Uuid::from_u128(rand::random::<u128>())
        );
        let unchanged = member.protocols == req.protocols;
        member.id = id.clone();
        member.client_id = req.client_id.clone();
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        member.protocols = req.protocols.clone();
        member.expires = now + req.session_timeout;
        let instance = req.instance_id.clone().unwrap_or_default();
        self.statics.insert(instance, id.clone());
        let was_leader = self.leader.as_deref() == Some(old.as_str());
        if was_leader {
            self.leader = Some(id.clone());
        }
        self.members.insert(id.clone(), member);
        // The point of static membership: a follower's restart costs no rebalance. The
        // leader must run the assignor again, so it gets a rebalance.
        if self.state == GroupState::Stable && unchanged && !was_leader {
            // The new id must survive a restart, or the member is fenced by its old one.
            self.store_needed = true;
            return Step::Reply(self.current_join_reply(&id));
        }
        self.rejoin(
            JoinRequest {
                member_id: id,
                ..req
            },
            now,
        )
    }

    fn rejoin(&mut self, req: JoinRequest, now: Instant) -> Step<JoinReply> {
        let id = req.member_id.clone();
        let is_leader = self.leader.as_deref() == Some(id.as_str());
        let state = self.state;
        let member = self
            .members
            .get_mut(&id)
            .expect("rejoin is called for members only");
        let unchanged = member.protocols == req.protocols;
        member.protocols = req.protocols;
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        member.client_id = req.client_id;
        member.expires = now + req.session_timeout;
        match state {
            GroupState::CompletingRebalance if unchanged => {
                // A retried join of the generation that just completed: same answer.
                return Step::Reply(self.current_join_reply(&id));
            }
            GroupState::Stable if unchanged && !is_leader => {
                return Step::Reply(self.current_join_reply(&id));
            }
            _ => {}
        }
        let (tx, rx) = oneshot::channel();
        let member = self.members.get_mut(&id).expect("checked above");
        if let Some(old) = member.join_tx.replace(tx) {
            let _ = old.send(JoinReply::error(codes::REBALANCE_IN_PROGRESS, &id));
        }
        let was_empty = self.state == GroupState::Empty;
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        let delay = self.initial_rebalance_delay;
        let waiting = self.join_not_before.is_some_and(|t| t > now);
        if !delay.is_zero() && (was_empty || waiting) {
            let until = now + delay;
            self.join_not_before = Some(self.phase_deadline.map_or(until, |d| until.min(d)));
        }
        self.maybe_complete_join(now);
        Step::Wait(rx)
    }

    /// The join answer for the generation in force (a rejoin that changes nothing).
    fn current_join_reply(&self, member_id: &str) -> JoinReply {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| {
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.metadata_for(&protocol),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinReply {
            error: codes::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    /// Starts a rebalance: every member must join again within the longest rebalance
    /// timeout among them. Members waiting on SyncGroup are told to rejoin.
    pub fn prepare_rebalance(&mut self, now: Instant) {
        for m in self.members.values_mut() {
            if let Some(tx) = m.sync_tx.take() {
                let _ = tx.send(SyncReply::error(codes::REBALANCE_IN_PROGRESS));
            }
            m.assignment = Bytes::new();
        }
        self.awaiting_store = None;
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        // Not Empty any more: a later Empty period counts from its own start, even when
        // no timer tick saw this one.
        self.empty_since_ms = None;
        self.state = GroupState::PreparingRebalance;
        self.phase_deadline = Some(now + timeout);
    }

    /// Completes the join phase once every known member has rejoined.
    pub fn maybe_complete_join(&mut self, now: Instant) {
        if self.state == GroupState::PreparingRebalance
            && self.join_not_before.is_none_or(|t| t <= now)
            && self.members.values().all(|m| m.join_tx.is_some())
        {
            self.complete_join(now);
        }
    }

    /// Ends the join phase: members that did not rejoin are dropped, the generation
    /// advances, a protocol is chosen and every waiting member gets its answer — the
    /// leader with everyone's subscription metadata.
    fn complete_join(&mut self, now: Instant) {
        self.join_not_before = None;
        let missing: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_tx.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in missing {
            self.remove_member(&id);
        }
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            self.phase_deadline = None;
            // The stored generation's members are gone: record the empty generation.
            self.store_needed = true;
            return;
        }
        let leader = match &self.leader {
            Some(l) if self.members.contains_key(l) => l.clone(),
            _ => self
                .members
                .keys()
                .next()
                .cloned()
                .expect("members is not empty"),
        };
        self.leader = Some(leader.clone());
        self.protocol = Some(self.select_protocol(&leader));
        self.state = GroupState::CompletingRebalance;
        // The leader must sync within the rebalance timeout, or the group rebalances again.
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.phase_deadline = Some(now + timeout);
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let reply = self.current_join_reply(&id);
            let m = self.members.get_mut(&id).expect("listed above");
            m.expires = now + m.session_timeout;
            if let Some(tx) = m.join_tx.take() {
                let _ = tx.send(reply);
            }
        }
    }

    /// Kafka's vote: each member votes for its most preferred protocol that all members
    /// support; the most votes wins, ties go to the leader's order of preference.
    fn select_protocol(&self, leader: &str) -> String {
        let leader_member = &self.members[leader];
        let candidates: Vec<&str> = leader_member
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| self.members.values().all(|m| m.supports(n)))
            .collect();
        // Admission checks that a common protocol exists, so there is a candidate.
        assert!(
            !candidates.is_empty(),
            "group {} has no common protocol",
            self.id
        );
        let mut votes = vec![0usize; candidates.len()];
        for m in self.members.values() {
            if let Some(i) = m
                .protocols
                .iter()
                .find_map(|(n, _)| candidates.iter().position(|c| c == n))
            {
                votes[i] += 1;
            }
        }
        let best = (0..candidates.len())
            .max_by_key(|&i| (votes[i], std::cmp::Reverse(i)))
            .expect("candidates is not empty");
        candidates[best].to_string()
    }

    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Step<SyncReply> {
        if let Some(code) = self.check_member(member_id, instance_id, generation) {
            return Step::Reply(SyncReply::error(code));
        }
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|n| Some(n) != self.protocol.as_deref())
        {
            return Step::Reply(SyncReply::error(codes::INCONSISTENT_GROUP_PROTOCOL));
        }
        match self.state {
            GroupState::Empty => Step::Reply(SyncReply::error(codes::UNKNOWN_MEMBER_ID)),
            GroupState::PreparingRebalance => {
                Step::Reply(SyncReply::error(codes::REBALANCE_IN_PROGRESS))
            }
            GroupState::Stable => {
                let m = self.members.get_mut(member_id).expect("checked member");
                m.expires = now + m.session_timeout;
                let assignment = m.assignment.clone();
                Step::Reply(self.sync_reply(assignment))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let m = self.members.get_mut(member_id).expect("checked member");
                m.expires = now + m.session_timeout;
                if let Some(old) = m.sync_tx.replace(tx) {
                    let _ = old.send(SyncReply::error(codes::REBALANCE_IN_PROGRESS));
                }
                // A retried leader sync while its assignment is being stored changes
                // nothing: the store's outcome answers it.
                if self.leader.as_deref() == Some(member_id) && self.awaiting_store.is_none() {
                    for m in self.members.values_mut() {
                        m.assignment = Bytes::new();
                    }
                    // Assignments for ids that are not members are ignored, as Kafka does.
                    for (id, a) in assignments {
                        if let Some(m) = self.members.get_mut(&id) {
                            m.assignment = a;
                        }
                    }
                    // Stable (and the answers) once the caller has stored the record.
                    self.awaiting_store = Some(self.generation);
                    self.store_needed = true;
                }
                Step::Wait(rx)
            }
        }
    }

    fn sync_reply(&self, assignment: Bytes) -> SyncReply {
        SyncReply {
            error: codes::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment,
        }
    }

    /// The membership checks Heartbeat, SyncGroup and OffsetCommit share.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Option<i16> {
        if let Some(instance) = instance_id {
            if let Some(known) = self.statics.get(instance) {
                if known != member_id {
                    return Some(codes::FENCED_INSTANCE_ID);
                }
            }
        }
        if !self.members.contains_key(member_id) {
            return Some(codes::UNKNOWN_MEMBER_ID);
        }
        if generation != self.generation {
            return Some(codes::ILLEGAL_GENERATION);
        }
        None
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        if let Some(code) = self.check_member(member_id, instance_id, generation) {
            return code;
        }
        let m = self.members.get_mut(member_id).expect("checked member");
        m.expires = now + m.session_timeout;
        match self.state {
            GroupState::Empty => codes::UNKNOWN_MEMBER_ID,
            GroupState::PreparingRebalance => codes::REBALANCE_IN_PROGRESS,
            GroupState::CompletingRebalance | GroupState::Stable => codes::NONE,
        }
    }

    /// Whether an OffsetCommit with this membership may write (Kafka's rules: a
    /// generation of -1 is a commit from outside group management, allowed while the
    /// group has no members).
    pub fn check_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        if generation < 0 && self.state == GroupState::Empty {
            return codes::NONE;
        }
        if self.state == GroupState::CompletingRebalance {
            return codes::REBALANCE_IN_PROGRESS;
        }
        if let Some(code) = self.check_member(member_id, instance_id, generation) {
            return code;
        }
        let m = self.members.get_mut(member_id).expect("checked member");
        m.expires = now + m.session_timeout;
        codes::NONE
    }

    /// LeaveGroup for one member (by member id, or by instance id for static members).
    pub fn leave(&mut self, member_id: &str, instance_id: Option<&str>) -> i16 {
        let id = match instance_id {
            Some(instance) => match self.statics.get(instance) {
                Some(known) if member_id.is_empty() || known == member_id => known.clone(),
                Some(_) => return codes::FENCED_INSTANCE_ID,
                None => return codes::UNKNOWN_MEMBER_ID,
            },
            None => member_id.to_string(),
        };
        if self.pending.remove(&id).is_some() {
            return codes::NONE;
        }
        if !self.members.contains_key(&id) {
            return codes::UNKNOWN_MEMBER_ID;
        }
        self.remove_member(&id);
        codes::NONE
    }

    /// After members left or expired: the rest must rebalance.
    pub fn members_changed(&mut self, now: Instant) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            GroupState::Empty => {}
        }
    }

    fn remove_member(&mut self, id: &str) {
        let Some(mut m) = self.members.shift_remove(id) else {
            return;
        };
        if let Some(instance) = &m.instance_id {
            if self.statics.get(instance).map(String::as_str) == Some(id) {
                self.statics.remove(instance);
            }
        }
        if let Some(tx) = m.join_tx.take() {
            let _ = tx.send(JoinReply::error(codes::UNKNOWN_MEMBER_ID, id));
        }
        if let Some(tx) = m.sync_tx.take() {
            let _ = tx.send(SyncReply::error(codes::UNKNOWN_MEMBER_ID));
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// Timer work, run periodically: expired sessions, ended rebalance phases, stale
    /// KIP-394 ids. Returns whether anything changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        self.pending.retain(|_, expires| *expires > now);
        let phase_over = self.phase_deadline.is_some_and(|d| d <= now);
        match self.state {
            GroupState::PreparingRebalance if phase_over => {
                self.complete_join(now);
                return true;
            }
            GroupState::PreparingRebalance if self.join_not_before.is_some_and(|t| t <= now) => {
                // The initial delay is over: complete if everyone is in.
                self.maybe_complete_join(now);
                if self.state != GroupState::PreparingRebalance {
                    return true;
                }
            }
            GroupState::CompletingRebalance if phase_over => {
                // The leader never sent its assignment: drop members that have not synced
                // (the leader among them) and start over.
                let stale: Vec<String> = self
                    .members
                    .values()
                    .filter(|m| m.sync_tx.is_none())
                    .map(|m| m.id.clone())
                    .collect();
                for id in stale {
                    self.remove_member(&id);
                }
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
                return true;
            }
            _ => {}
        }
        // Members parked in JoinGroup or SyncGroup are alive: their call is in progress.
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_tx.is_none() && m.sync_tx.is_none() && m.expires <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "session expired");
            self.remove_member(id);
            changed = true;
        }
        if changed {
            self.members_changed(now);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_req(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.to_string(),
            instance_id: None,
            client_id: "c".into(),
            client_host: String::new(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from_static(b"m")))
                .collect(),
            require_known_member_id: true,
        }
    }

    fn ready<T>(step: Step<T>) -> T {
        match step {
            Step::Reply(r) => r,
            Step::Wait(mut rx) => rx.try_recv().unwrap().expect("answered"),
        }
    }

    #[test]
    fn first_join_without_member_id_gets_member_id_required() {
        let mut g = Group::new("g");
        let r = ready(g.join(join_req("", &["range"]), Instant::now()));
        assert_eq!(r.error, codes::MEMBER_ID_REQUIRED);
        assert!(!r.member_id.is_empty());
        let r = ready(g.join(join_req(&r.member_id, &["range"]), Instant::now()));
        assert_eq!(r.error, codes::NONE);
        assert_eq!(r.generation, 1);
        assert_eq!(r.leader, r.member_id);
        assert_eq!(r.members.len(), 1);
    }

    #[test]
    fn protocol_vote_picks_one_every_member_supports() {
        let mut g = Group::new("g");
        let now = Instant::now();
        let a = ready(g.join(join_req("", &["cooperative-sticky", "range"]), now)).member_id;
        let Step::Wait(_) = g.join(join_req(&a, &["cooperative-sticky", "range"]), now) else {
            panic!("first member waits for the join phase")
        };
        let b = ready(g.join(join_req("", &["range", "roundrobin"]), now)).member_id;
        let _ = g.join(join_req(&b, &["range", "roundrobin"]), now);
        // The first join completed alone (generation 1); b's arrival started generation 2
        // which waits for a to rejoin.
        assert_eq!(g.state, GroupState::PreparingRebalance);
        let ra = ready(g.join(join_req(&a, &["cooperative-sticky", "range"]), now));
        assert_eq!(ra.protocol_name.as_deref(), Some("range"));
        assert_eq!(ra.generation, 2);
    }

    #[test]
    fn unknown_member_and_stale_generation_are_refused() {
        let mut g = Group::new("g");
        let now = Instant::now();
        assert_eq!(
            g.heartbeat("nobody", None, 0, now),
            codes::UNKNOWN_MEMBER_ID
        );
        let a = ready(g.join(join_req("", &["range"]), now)).member_id;
        let r = ready(g.join(join_req(&a, &["range"]), now));
        assert_eq!(
            g.heartbeat(&a, None, r.generation + 1, now),
            codes::ILLEGAL_GENERATION
        );
        assert_eq!(g.heartbeat(&a, None, r.generation, now), codes::NONE);
    }

    /// A one-member group through join and the leader's sync, its store still pending.
    fn synced_but_not_stored() -> (Group, String, oneshot::Receiver<SyncReply>) {
        let mut g = Group::new("g");
        let now = Instant::now();
        let a = ready(g.join(join_req("", &["range"]), now)).member_id;
        let r = ready(g.join(join_req(&a, &["range"]), now));
        let assignment = vec![(a.clone(), Bytes::from_static(b"asg"))];
        let Step::Wait(rx) = g.sync(&a, None, r.generation, None, None, assignment, now) else {
            panic!("the leader waits for its assignment to be stored");
        };
        (g, a, rx)
    }

    #[test]
    fn assignment_is_handed_out_only_once_stored() {
        let (mut g, a, mut rx) = synced_but_not_stored();
        assert!(g.store_needed);
        assert!(
            rx.try_recv().unwrap().is_none(),
            "not answered before the store"
        );
        assert_eq!(g.state, GroupState::CompletingRebalance);
        let md = g.metadata(5).expect("a synced generation is storable");
        assert_eq!(md.members[0].assignment, Bytes::from_static(b"asg"));
        g.assignment_stored(g.generation, Ok(()), Instant::now());
        assert_eq!(g.state, GroupState::Stable);
        let reply = rx.try_recv().unwrap().expect("answered after the store");
        assert_eq!(
            (reply.error, reply.assignment),
            (codes::NONE, Bytes::from_static(b"asg"))
        );
        assert_eq!(
            g.heartbeat(&a, None, g.generation, Instant::now()),
            codes::NONE
        );
    }

    #[test]
    fn a_failed_store_answers_the_error_and_rebalances() {
        let (mut g, _a, mut rx) = synced_but_not_stored();
        g.assignment_stored(
            g.generation,
            Err(codes::COORDINATOR_NOT_AVAILABLE),
            Instant::now(),
        );
        let reply = rx.try_recv().unwrap().expect("answered");
        assert_eq!(reply.error, codes::COORDINATOR_NOT_AVAILABLE);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert!(g.metadata(0).is_none(), "nothing to store mid-rebalance");
    }

    #[test]
    fn a_restored_group_is_stable_in_its_stored_generation() {
        let (mut g, a, _rx) = synced_but_not_stored();
        g.assignment_stored(g.generation, Ok(()), Instant::now());
        let md = g.metadata(7).unwrap();
        let now = Instant::now();
        let mut r = Group::restore("g", md.clone(), now);
        assert_eq!(r.state, GroupState::Stable);
        assert_eq!(r.generation, g.generation);
        assert_eq!(r.leader.as_deref(), Some(a.as_str()));
        assert_eq!(r.metadata(7), Some(md));
        assert_eq!(r.heartbeat(&a, None, g.generation, now), codes::NONE);
        // Its session timer restarted at load: silence expires it.
        r.tick(now + Duration::from_secs(11));
        assert!(r.members.is_empty());
        assert_eq!(r.state, GroupState::Empty);
        assert!(r.store_needed, "the empty generation is stored");
    }

    fn committed(commit_ms: i64) -> Committed {
        Committed {
            offset: 1,
            leader_epoch: -1,
            metadata: String::new(),
            commit_ms,
            log_offset: 0,
        }
    }

    fn keys(v: &[i32]) -> Vec<(String, i32)> {
        v.iter().map(|p| ("t".to_string(), *p)).collect()
    }

    /// KIP-211: a group that never had members loses each offset `retention` after its
    /// commit; a consumer group keeps all while it has members, and loses all once it
    /// has been Empty for `retention`, however recent the commits.
    #[test]
    fn offsets_expire_by_commit_time_alone_or_by_time_empty_for_consumer_groups() {
        const RETENTION_MS: i64 = 10_000;
        let mut standalone = Group::new("s");
        standalone.offsets.insert(("t".into(), 0), committed(1_000));
        standalone.offsets.insert(("t".into(), 1), committed(5_000));
        standalone.note_state_time(6_000);
        assert!(standalone.expired_offsets(10_999, RETENTION_MS).is_empty());
        assert_eq!(standalone.expired_offsets(11_000, RETENTION_MS), keys(&[0]));
        standalone.commits_in_flight = 1;
        assert!(standalone.expired_offsets(20_000, RETENTION_MS).is_empty());

        let mut g = Group::new("g");
        let now = Instant::now();
        let a = ready(g.join(join_req("", &["range"]), now)).member_id;
        ready(g.join(join_req(&a, &["range"]), now));
        g.offsets.insert(("t".into(), 0), committed(1_000));
        g.offsets.insert(("t".into(), 1), committed(99_000));
        g.note_state_time(50_000);
        assert!(
            g.expired_offsets(1_000_000, RETENTION_MS).is_empty(),
            "a group with a member keeps its offsets"
        );
        assert_eq!(g.leave(&a, None), codes::NONE);
        g.members_changed(now);
        assert_eq!(g.state, GroupState::Empty);
        g.note_state_time(100_000);
        g.note_state_time(105_000);
        assert_eq!(
            g.empty_since_ms,
            Some(100_000),
            "Empty since it was first seen so"
        );
        assert!(g.expired_offsets(109_999, RETENTION_MS).is_empty());
        assert_eq!(g.expired_offsets(110_000, RETENTION_MS), keys(&[0, 1]));

        // The stored record carries the time it became Empty; a restart restores it.
        let md = g.metadata(120_000).unwrap();
        assert_eq!(md.state_ms, 100_000);
        let r = Group::restore("g", md, now);
        assert_eq!(r.empty_since_ms, Some(100_000));
    }
}
