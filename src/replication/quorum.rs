//! The metadata quorum: raft-rs's `RawNode` on shard 0, driven by one task.
//!
//! Everything that touches the `RawNode` goes through the driver task's queue (ticks
//! from a glommio timer, messages from peers, proposals), so the state machine has one
//! owner and `Ready`s are handled strictly in order: send what may go out early,
//! persist entries + hard state (fdatasync), send what needed persistence, apply
//! committed entries to the image and hand it to every shard, advance.
//!
//! Decisions (`MetaCommand::decide`) run only on the leader, once it has applied an
//! entry of its own term (so its image holds everything committed before), under the
//! shard's metadata lock held until the entry is applied. Other brokers forward
//! commands to the leader over the cluster link and then wait until their own image has
//! applied the entry, so a client that created a topic through any broker sees it on
//! that broker next.
//!
//! Two operator mistakes are refused at start (`super::StartRefused`, exit 2): a voter
//! list other than the one the Raft log was written under (a broker restarted with only
//! itself as voter would elect itself and split the cluster), and a second process with
//! the node id of a live broker (Kafka's DUPLICATE_BROKER_REGISTRATION; see
//! `register_at_start`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};

use super::raft_log::RaftLog;
use super::transport::{
    self, PeerLink, KIND_FORWARD, KIND_FORWARD_REPLY, KIND_HELLO, KIND_KAFKA, KIND_RAFT,
};
use super::StartRefused;

mod registration;
use crate::config::ClusterConfig;
use crate::metadata::{Image, MetaEvent};
use crate::replication::commands::{duplicate_registration, MetaCommand, MetaReply};
use crate::shard::Shard;
use crate::time::with_timeout;
use registration::PeerProcess;

/// Raft's clock. Elections after 10–20 ticks of silence (1–2 s), heartbeats every 2.
pub const TICK: Duration = Duration::from_millis(100);
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;
/// How long a metadata change may wait for a leader, a commit and its application.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between looks for a leader while there is none.
const LEADER_POLL: Duration = Duration::from_millis(20);
/// A broker the leader has not heard from for this long gets no new replicas
/// (Kafka's broker.session.timeout.ms, shorter: Raft heartbeats every 200 ms).
pub const BROKER_SESSION_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the metadata leader looks for dead brokers and leaderless partitions.
const FAILURE_CHECK: Duration = Duration::from_millis(500);

/// Applied entries remembered for late proposers (bounds memory; a proposer asks
/// within moments of proposing).
const RECENT_APPLIED_MAX: usize = 4096;

/// The payload of a normal Raft entry: the events of one decided command. `id` lets a
/// proposer tell its own entry from one that replaced it after a leader change.
#[derive(Serialize, Deserialize)]
struct Proposal {
    id: u64,
    events: Vec<MetaEvent>,
}

/// Why a forwarded command failed. `retry`: it was not executed (the receiver was not
/// the leader), so asking again elsewhere is safe.
#[derive(Serialize, Deserialize)]
struct ForwardFailure {
    retry: bool,
    message: String,
    /// The metadata leader as the answering broker knows it (with `retry`): a broker
    /// that knows none of its own learns where to ask, or that one exists.
    #[serde(default)]
    leader: Option<i32>,
}

type ForwardReply = Result<(MetaReply, u64), ForwardFailure>;

enum Event {
    Tick,
    Raft(Message),
    Propose(Vec<u8>, oneshot::Sender<Result<u64, String>>),
    /// Hand Raft leadership to this node (raft id), if this one leads.
    TransferLeader(u64),
}

struct Waiter {
    index: u64,
    /// `Some`: the proposal expected at `index`; answered false if another entry landed.
    proposal: Option<u64>,
    tx: oneshot::Sender<bool>,
}

/// Raft ids must be non-zero; Kafka node ids start at 0.
fn raft_id(node: i32) -> u64 {
    node as u64 + 1
}

fn node_id(raft: u64) -> i32 {
    raft as i32 - 1
}

pub struct Quorum {
    node_id: i32,
    events: LocalSender<Event>,
    peers: HashMap<i32, PeerLink>,
    leader_id: Cell<i32>,
    /// This broker leads and has applied an entry of its term: it may decide.
    leader_ready: Cell<bool>,
    applied: Cell<u64>,
    waiters: RefCell<Vec<Waiter>>,
    /// (index, proposal id) of the latest applied entries, for a proposer that asks
    /// after its entry was already applied.
    recent: RefCell<std::collections::VecDeque<(u64, Option<u64>)>>,
    forwards: RefCell<HashMap<u64, oneshot::Sender<ForwardReply>>>,
    next_forward: Cell<u64>,
    /// When each peer was last heard from (any Raft message): liveness for placement.
    last_heard: RefCell<HashMap<i32, Instant>>,
    /// When this broker last became leader. Only what a leader hears itself counts for
    /// liveness: as a follower it heard only the old leader, which may be dead now.
    leader_since: Cell<Option<Instant>>,
    /// Peer processes connected to this broker's cluster listener, by (node id,
    /// incarnation) from their hello: which process of a node id is live.
    processes: RefCell<HashMap<(i32, u64), PeerProcess>>,
}

/// Serves one replica fetcher's connection on the cluster listener.
pub type ReplicaFetchServer =
    Rc<dyn Fn(Rc<Shard>, glommio::net::TcpStream) -> std::pin::Pin<Box<dyn Future<Output = ()>>>>;

impl Quorum {
    /// This broker's metadata quorum: on shard 0 of a cluster member, else `None`.
    pub fn of(shard: &Shard) -> Option<Rc<Quorum>> {
        shard.services.get::<Quorum>()
    }

    /// Opens the Raft log in `data/meta`, replays and applies what is committed (so this
    /// broker starts with the image it had), binds the cluster listener and starts the
    /// driver, the ticker and the peer links. Runs on shard 0.
    /// `fetch_server` serves replica fetchers' connections to the cluster listener (the
    /// Kafka protocol is the layer above; it hands this its server).
    pub async fn start(
        shard: &Rc<Shard>,
        cluster: &ClusterConfig,
        fetch_server: ReplicaFetchServer,
    ) -> anyhow::Result<Rc<Quorum>> {
        let me = shard.config.node_id;
        let voters: Vec<u64> = cluster.voters.iter().map(|v| raft_id(v.id)).collect();
        let dir = shard.config.data_dir.join("meta");
        let (log, storage) = RaftLog::open(&dir, voters.clone())
            .map_err(|e| anyhow::anyhow!("cannot open the raft log in {}: {e}", dir.display()))?;
        let mut configured = voters.clone();
        configured.sort_unstable();
        if let Some(stored) = log.stored_voters() {
            if stored != configured.as_slice() {
                return Err(voters_refused(&dir, me, stored, &configured).into());
            }
        }
        let config = raft::Config {
            id: raft_id(me),
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("raft config: {e}"))?;
        let logger = slog::Logger::root(super::SlogToTracing, slog::o!());
        let node =
            RawNode::new(&config, storage, &logger).map_err(|e| anyhow::anyhow!("raft: {e}"))?;
        // A port in use here is most often a second process of a broker that runs: say so.
        let listener = crate::ports::bind_exclusive_local(cluster.listen)
            .await
            .map_err(|e| {
                StartRefused(format!(
                    "cluster listener (cluster.listen for node.id {me}): {e}. If a broker with \
                     node.id {me} already runs on this host, this process is a second one: \
                     stop it, or give this broker its own node.id and cluster address"
                ))
            })?;
        let (tx, rx) = local_channel::new_unbounded();
        let hello = transport::hello(me, super::incarnation());
        let quorum = Rc::new_cyclic(|weak: &std::rc::Weak<Quorum>| {
            let peers = cluster
                .voters
                .iter()
                .filter(|v| v.id != me)
                .map(|v| {
                    let w = weak.clone();
                    let on_frame: Rc<dyn Fn(u8, Bytes)> = Rc::new(move |kind, payload| {
                        if let (Some(q), KIND_FORWARD_REPLY) = (w.upgrade(), kind) {
                            q.on_forward_reply(payload);
                        }
                    });
                    (v.id, PeerLink::start(v.id, v.addr, hello.clone(), on_frame))
                })
                .collect();
            Quorum {
                node_id: me,
                events: tx,
                peers,
                leader_id: Cell::new(-1),
                leader_ready: Cell::new(false),
                applied: Cell::new(0),
                waiters: RefCell::default(),
                recent: RefCell::default(),
                forwards: RefCell::default(),
                next_forward: Cell::new(1),
                last_heard: RefCell::default(),
                leader_since: Cell::new(None),
                processes: RefCell::default(),
            }
        });
        let (dropped, replay_commit) = (log.replay_dropped_bytes, log.replay_commit);
        let mut driver = Driver { node, log };
        // Apply what this broker's log already has committed before serving anything.
        driver.on_ready(&quorum, shard).await;
        if driver.log.stored_voters().is_none() {
            // A log from before voter sets were stored: every registered broker was a
            // voter, so one outside the list shows the list changed. A fresh log has
            // none and takes the configured list.
            let image = shard.image();
            let outside: Vec<i32> = image
                .brokers
                .keys()
                .copied()
                .filter(|b| !configured.contains(&raft_id(*b)))
                .collect();
            if !outside.is_empty() {
                let mut stored: Vec<u64> = image.brokers.keys().map(|b| raft_id(*b)).collect();
                stored.sort_unstable();
                return Err(voters_refused(&dir, me, &stored, &configured).into());
            }
            driver.log.store_voters(&configured).map_err(|e| {
                anyhow::anyhow!("cannot store the voter set in {}: {e}", dir.display())
            })?;
        }
        // Before the driver runs, nothing else changes the image: directories of no
        // partition in it can go (see `remove_stray_dirs` for why that is safe).
        super::apply::remove_stray_dirs(
            shard,
            dropped == 0 && quorum.applied.get() >= replay_commit,
        );
        tracing::info!(
            node = me,
            applied = quorum.applied.get(),
            voters = cluster.voters.len(),
            listen = %cluster.listen,
            "metadata quorum started"
        );
        glommio::spawn_local(driver.run(quorum.clone(), shard.clone(), rx)).detach();
        {
            let q = quorum.clone();
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(TICK).await;
                    if q.events.try_send(Event::Tick).is_err() {
                        return;
                    }
                }
            })
            .detach();
        }
        glommio::spawn_local(serve(listener, quorum.clone(), shard.clone(), fetch_server)).detach();
        glommio::spawn_local(watch_brokers(quorum.clone(), shard.clone())).detach();
        Ok(quorum)
    }

    /// The metadata leader's node id, if one is known.
    pub fn leader(&self) -> Option<i32> {
        let l = self.leader_id.get();
        (l >= 0).then_some(l)
    }

    /// Peers heard from within `within` while this broker leads (it always counts).
    pub fn live_brokers(&self, within: Duration) -> Vec<i32> {
        let now = Instant::now();
        let Some(since) = self.leader_since.get() else {
            return vec![self.node_id];
        };
        let mut live: Vec<i32> = self
            .last_heard
            .borrow()
            .iter()
            .filter(|(_, t)| **t >= since && now.duration_since(**t) < within)
            .map(|(id, _)| *id)
            .collect();
        live.push(self.node_id);
        live.sort_unstable();
        live
    }

    /// Peers heard from (any Raft message) within `within`, whatever this broker's role.
    pub fn peers_heard(&self, within: Duration) -> Vec<i32> {
        let now = Instant::now();
        let mut heard: Vec<i32> = self
            .last_heard
            .borrow()
            .iter()
            .filter(|(_, t)| now.duration_since(**t) < within)
            .map(|(id, _)| *id)
            .collect();
        heard.sort_unstable();
        heard
    }

    /// Controlled shutdown: if this broker leads the metadata quorum, hands leadership
    /// to a peer it has heard from (Raft leader transfer), so the cluster does not wait
    /// out an election once it is gone. Returns whether another broker leads now
    /// (`deadline` bounds the wait).
    pub async fn hand_over_leadership(&self, deadline: Instant) -> bool {
        let Some(to) = self
            .peers_heard(BROKER_SESSION_TIMEOUT)
            .into_iter()
            .max_by_key(|id| self.last_heard.borrow().get(id).copied())
        else {
            return self.leader().is_some_and(|l| l != self.node_id);
        };
        while self.leader() == Some(self.node_id) && Instant::now() < deadline {
            // Repeated while it has not happened: a transfer aborts after an election
            // timeout if the transferee did not catch up.
            if self
                .events
                .try_send(Event::TransferLeader(raft_id(to)))
                .is_err()
            {
                break;
            }
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            let until = Instant::now() + wait;
            while self.leader() == Some(self.node_id) && Instant::now() < until {
                glommio::timer::sleep(LEADER_POLL).await;
            }
        }
        self.leader().is_some_and(|l| l != self.node_id)
    }

    /// Whether this broker has led for longer than the session timeout, so every live
    /// broker has been heard from during its term.
    fn knows_liveness(&self) -> bool {
        self.leader_since
            .get()
            .is_some_and(|since| since.elapsed() > BROKER_SESSION_TIMEOUT)
    }

    /// Decides and commits `cmd` through the quorum (here if this broker leads,
    /// otherwise on the leader), and returns once this broker's shards have applied it.
    pub async fn commit(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        cmd: MetaCommand,
    ) -> Result<MetaReply, String> {
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        loop {
            if self.leader_ready.get() {
                return match self.decide_and_commit(shard, cmd).await {
                    Ok((reply, _)) => Ok(reply),
                    Err(f) => Err(f.message),
                };
            }
            if let Some(leader) = self.leader().filter(|l| *l != self.node_id) {
                match self.forward(leader, &cmd, deadline).await {
                    Ok(reply) => return Ok(reply),
                    Err(f) if f.retry && Instant::now() < deadline => {
                        glommio::timer::sleep(LEADER_POLL).await;
                        continue;
                    }
                    Err(f) => return Err(f.message),
                }
            }
            if Instant::now() >= deadline {
                return Err(
                    "no metadata leader (is a majority of controller.quorum.voters up?)".into(),
                );
            }
            glommio::timer::sleep(LEADER_POLL).await;
        }
    }

    /// On the leader: decide against the current image, propose, wait until applied.
    /// Returns the reply and the entry's index (0 when nothing changed).
    async fn decide_and_commit(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        cmd: MetaCommand,
    ) -> ForwardReply {
        let not_leader = || ForwardFailure {
            retry: true,
            message: "not the metadata leader".into(),
            leader: None,
        };
        let _permit = shard
            .meta_lock
            .acquire_permit(1)
            .await
            .map_err(|e| ForwardFailure {
                retry: false,
                message: e.to_string(),
                leader: None,
            })?;
        if !self.leader_ready.get() {
            return Err(not_leader());
        }
        // A new leader has not yet heard from everyone: it would take live brokers
        // for dead ones.
        if matches!(cmd, MetaCommand::CheckBrokers) && !self.knows_liveness() {
            return Ok((MetaReply::Done, self.applied.get()));
        }
        let image = shard.image();
        if let MetaCommand::RegisterBroker(b) = &cmd {
            let live = self.live_incarnations(b.id);
            tracing::debug!(
                node = b.id,
                incarnation = b.incarnation,
                ?live,
                "registration"
            );
            if let Some(f) = duplicate_registration(&image, b, &live) {
                crate::warn_limited!(node = b.id, "registration refused: {}", f.1);
                // Index 0: the refused process has nothing to wait for (it may apply
                // nothing at all: Raft traffic for its id goes to the live process).
                return Ok((MetaReply::RegisterBroker(Err(f)), 0));
            }
        }
        let live = self.live_brokers(BROKER_SESSION_TIMEOUT);
        // A broker leaving needs its partitions moved now: a leader that does not know
        // liveness yet also takes the unfenced brokers it has not heard from for live
        // (as the image does); one it takes wrongly is fenced by the next check.
        let shutting = matches!(cmd, MetaCommand::ControlledShutdown { .. });
        let optimistic = shutting && !self.knows_liveness();
        let eligible: Vec<i32> = image
            .brokers
            .keys()
            .copied()
            .filter(|b| {
                !image.shutting_down.contains(b)
                    && (live.contains(b) || optimistic && !image.fenced.contains(b))
            })
            .collect();
        let check = matches!(cmd, MetaCommand::CheckBrokers) || shutting;
        let (events, reply) = cmd.decide(&image, Some(&eligible));
        if events.is_empty() {
            return Ok((reply, self.applied.get()));
        }
        if check {
            log_failover(&events);
        }
        let id = rand::random::<u64>();
        let data = serde_json::to_vec(&Proposal { id, events }).map_err(|e| ForwardFailure {
            retry: false,
            message: e.to_string(),
            leader: None,
        })?;
        let (tx, rx) = oneshot::channel();
        if self.events.try_send(Event::Propose(data, tx)).is_err() {
            return Err(not_leader());
        }
        let index = match rx.await {
            Ok(Ok(index)) => index,
            Ok(Err(_)) | Err(_) => return Err(not_leader()),
        };
        match self.wait_applied(index, Some(id), COMMIT_TIMEOUT).await {
            Some(true) => Ok((reply, index)),
            Some(false) => Err(ForwardFailure {
                retry: false,
                message: "metadata leadership changed before the change committed; retry".into(),
                leader: None,
            }),
            None => Err(ForwardFailure {
                retry: false,
                message: "metadata change not committed in time (quorum lost?)".into(),
                leader: None,
            }),
        }
    }

    async fn forward(
        &self,
        leader: i32,
        cmd: &MetaCommand,
        deadline: Instant,
    ) -> Result<MetaReply, ForwardFailure> {
        let Some(link) = self.peers.get(&leader) else {
            return Err(ForwardFailure {
                retry: true,
                message: format!("metadata leader {leader} is not a known voter"),
                leader: None,
            });
        };
        let id = self.next_forward.get();
        self.next_forward.set(id + 1);
        let mut payload = id.to_be_bytes().to_vec();
        serde_json::to_writer(&mut payload, cmd).expect("commands always serialize");
        let (tx, rx) = oneshot::channel();
        self.forwards.borrow_mut().insert(id, tx);
        if !link.send(transport::frame(KIND_FORWARD, &payload)) {
            self.forwards.borrow_mut().remove(&id);
            return Err(ForwardFailure {
                retry: true,
                message: "cluster link to the metadata leader is congested".into(),
                leader: None,
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = with_timeout(left, rx).await;
        self.forwards.borrow_mut().remove(&id);
        match reply {
            Some(Ok(Ok((reply, index)))) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.wait_applied(index, None, left).await {
                    Some(_) => Ok(reply),
                    None => Err(ForwardFailure {
                        retry: false,
                        message: "committed, but not yet applied on this broker".into(),
                        leader: Some(leader),
                    }),
                }
            }
            Some(Ok(Err(f))) => Err(f),
            // Lost with the connection, or no answer in time: the outcome is unknown.
            Some(Err(_)) | None => Err(ForwardFailure {
                retry: false,
                message: format!("no answer from metadata leader {leader} in time"),
                leader: None,
            }),
        }
    }

    fn on_forward_reply(&self, payload: Bytes) {
        if payload.len() < 8 {
            return;
        }
        let id = u64::from_be_bytes(payload[..8].try_into().unwrap());
        let reply: ForwardReply = match serde_json::from_slice(&payload[8..]) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable forward reply");
                return;
            }
        };
        if let Some(tx) = self.forwards.borrow_mut().remove(&id) {
            let _ = tx.send(reply);
        }
    }

    /// `Some(true)` once entry `index` is applied here (and, with `proposal`, was that
    /// proposal); `Some(false)` if another entry took the index; `None` on timeout.
    async fn wait_applied(
        &self,
        index: u64,
        proposal: Option<u64>,
        timeout: Duration,
    ) -> Option<bool> {
        if index <= self.applied.get() {
            let Some(id) = proposal else {
                return Some(true);
            };
            let recent = self.recent.borrow();
            return Some(recent.iter().any(|(i, p)| *i == index && *p == Some(id)));
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push(Waiter {
            index,
            proposal,
            tx,
        });
        with_timeout(timeout, rx).await.and_then(|r| r.ok())
    }

    fn on_applied(&self, index: u64, proposal: Option<u64>) {
        self.applied.set(index);
        {
            let mut recent = self.recent.borrow_mut();
            if recent.len() == RECENT_APPLIED_MAX {
                recent.pop_front();
            }
            recent.push_back((index, proposal));
        }
        let mut waiters = self.waiters.borrow_mut();
        let mut i = 0;
        while i < waiters.len() {
            let w = &waiters[i];
            if w.index <= index {
                let ok = match w.proposal {
                    None => true,
                    Some(id) => w.index == index && proposal == Some(id),
                };
                let w = waiters.swap_remove(i);
                let _ = w.tx.send(ok);
            } else {
                i += 1;
            }
        }
    }

    fn send_messages(&self, msgs: Vec<Message>) {
        for m in msgs {
            let to = node_id(m.to);
            let Some(link) = self.peers.get(&to) else {
                continue;
            };
            match m.write_to_bytes() {
                Ok(bytes) => {
                    link.send(transport::frame(KIND_RAFT, &bytes));
                }
                Err(e) => tracing::error!(error = %e, "raft message does not encode"),
            }
        }
    }
}

struct Driver {
    node: RawNode<MemStorage>,
    log: RaftLog,
}

impl Driver {
    async fn run(mut self, q: Rc<Quorum>, shard: Rc<Shard>, rx: LocalReceiver<Event>) {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Tick => {
                    self.node.tick();
                }
                Event::Raft(m) => {
                    q.last_heard
                        .borrow_mut()
                        .insert(node_id(m.from), Instant::now());
                    if let Err(e) = self.node.step(m) {
                        tracing::debug!(error = %e, "raft step refused a message");
                    }
                }
                Event::TransferLeader(to) => {
                    if self.node.raft.state == StateRole::Leader {
                        self.node.transfer_leader(to);
                    }
                }
                Event::Propose(data, tx) => {
                    let r = if self.node.raft.state != StateRole::Leader {
                        Err("not the leader".to_string())
                    } else {
                        match self.node.propose(Vec::new(), data) {
                            Ok(()) => Ok(self.node.raft.raft_log.last_index()),
                            Err(e) => Err(e.to_string()),
                        }
                    };
                    let _ = tx.send(r);
                }
            }
            self.on_ready(&q, &shard).await;
        }
    }

    async fn on_ready(&mut self, q: &Rc<Quorum>, shard: &Rc<Shard>) {
        if !self.node.has_ready() {
            self.update_role(q);
            return;
        }
        let mut ready = self.node.ready();
        q.send_messages(ready.take_messages());
        if !ready.snapshot().is_empty() {
            // This node never compacts its log, so no peer ever sends a snapshot.
            crate::fatal("raft: unexpected snapshot from the metadata leader");
        }
        if let Err(e) = self.log.persist(ready.entries(), ready.hs()) {
            crate::fatal(&format!("raft log write failed: {e}"));
        }
        {
            let store = self.node.mut_store();
            if let Err(e) = store.wl().append(ready.entries()) {
                crate::fatal(&format!("raft storage append: {e}"));
            }
            if let Some(hs) = ready.hs() {
                store.wl().set_hardstate(hs.clone());
            }
        }
        let committed = ready.take_committed_entries();
        q.send_messages(ready.take_persisted_messages());
        apply(q, shard, committed).await;
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            let hs = {
                let store = self.node.mut_store();
                let mut core = store.wl();
                core.mut_hard_state().set_commit(commit);
                core.hard_state().clone()
            };
            if let Err(e) = self.log.persist(&[], Some(&hs)) {
                crate::fatal(&format!("raft log write failed: {e}"));
            }
        }
        q.send_messages(light.take_messages());
        apply(q, shard, light.take_committed_entries()).await;
        self.node.advance_apply();
        self.update_role(q);
    }

    fn update_role(&self, q: &Quorum) {
        let raft = &self.node.raft;
        let leader = if raft.leader_id == 0 {
            -1
        } else {
            node_id(raft.leader_id)
        };
        if leader != q.leader_id.get() {
            tracing::info!(leader, term = raft.term, "metadata leader changed");
            q.leader_id.set(leader);
            super::set_controller(leader);
        }
        let leads = raft.state == StateRole::Leader;
        if leads != q.leader_since.get().is_some() {
            q.leader_since.set(leads.then(Instant::now));
        }
        let applied_term = raft.raft_log.term(q.applied.get()).unwrap_or(0);
        q.leader_ready
            .set(raft.state == StateRole::Leader && applied_term == raft.term);
    }
}

/// Applies committed entries to a copy of the image and hands the result to every
/// shard, then wakes whoever waits for those indexes.
async fn apply(q: &Rc<Quorum>, shard: &Rc<Shard>, entries: Vec<Entry>) {
    if entries.is_empty() {
        return;
    }
    let mut image: Option<Image> = None;
    let mut marks: Vec<(u64, Option<u64>)> = Vec::with_capacity(entries.len());
    for e in entries {
        let mut proposal_id = None;
        if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
            let p: Proposal = match serde_json::from_slice(&e.data) {
                Ok(p) => p,
                // Every broker would have to skip it alike; refusing is safer than
                // diverging from a newer broker's image.
                Err(err) => crate::fatal(&format!(
                    "metadata entry {} does not decode ({err}); refusing to continue",
                    e.index
                )),
            };
            let img = image.get_or_insert_with(|| (*shard.image()).clone());
            for ev in &p.events {
                img.apply(ev);
            }
            proposal_id = Some(p.id);
        }
        marks.push((e.index, proposal_id));
    }
    if let Some(image) = image {
        let image = Arc::new(image);
        shard
            .invoke_on_all(move |s| {
                let image = image.clone();
                async move { crate::replication::apply::apply_image(&s, image).await }
            })
            .await;
    }
    for (index, proposal) in marks {
        q.on_applied(index, proposal);
    }
}

/// A peer that connects must say what it is within this.
const FIRST_FRAME_WAIT: Duration = Duration::from_secs(10);

/// Whether `ip` is the address of a configured voter (or loopback, when a voter is).
fn is_voter_host(shard: &Shard, ip: std::net::IpAddr) -> bool {
    let Some(cluster) = &shard.config.cluster else {
        return false;
    };
    let canonical = |ip: std::net::IpAddr| ip.to_canonical();
    cluster.voters.iter().any(|v| {
        let voter = canonical(v.addr.ip());
        voter == canonical(ip) || (voter.is_loopback() && canonical(ip).is_loopback())
    })
}

/// Accepts peers' connections: Raft messages go to the driver, forwarded commands are
/// decided here (if this broker leads) and answered on the same connection.
async fn serve(
    listener: glommio::net::TcpListener,
    q: Rc<Quorum>,
    shard: Rc<Shard>,
    fetch_server: ReplicaFetchServer,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cluster accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Only the configured voters' hosts may speak the inter-broker protocol.
        let peer = stream.peer_addr().ok();
        if !peer.is_some_and(|p| is_voter_host(&shard, p.ip())) {
            crate::warn_limited!(peer = ?peer, "cluster listener: refusing a connection from a host that is not a configured voter");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (q, shard, fetch_server) = (q.clone(), shard.clone(), fetch_server.clone());
        glommio::spawn_local(async move {
            use futures::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = stream;
            let first = glommio::timer::timeout(FIRST_FRAME_WAIT, async {
                Ok(transport::read_frame(&mut stream).await)
            })
            .await;
            let Ok(Some(first)) = first else {
                return;
            };
            if first.0 == KIND_KAFKA {
                // A replica fetcher: the rest of the connection is the Kafka requests
                // fetchers make, and nothing else.
                fetch_server(shard, stream).await;
                return;
            }
            let mut first = Some(first);
            // The peer process this connection is from, once its hello said so.
            let mut sender: Option<(i32, u64)> = None;
            let (mut reader, mut writer) = stream.split();
            let (reply_tx, reply_rx) = local_channel::new_bounded::<Bytes>(transport::PEER_QUEUE_FRAMES_MAX);
            let reply_tx = Rc::new(reply_tx);
            let writer_task = glommio::spawn_local(async move {
                while let Some(f) = reply_rx.recv().await {
                    if writer.write_all(&f).await.is_err() {
                        break;
                    }
                }
            });
            loop {
                let next = match first.take() {
                    Some(f) => Some(f),
                    None => transport::read_frame(&mut reader).await,
                };
                let Some((kind, payload)) = next else { break };
                if let Some(p) = sender {
                    q.process_heard(p);
                }
                match kind {
                    KIND_HELLO => match transport::parse_hello(&payload) {
                        Some(p) if sender.is_none() => {
                            sender = Some(p);
                            q.process_connected(p);
                        }
                        _ => {
                            tracing::warn!("bad or repeated hello on a cluster link; closing it");
                            break;
                        }
                    },
                    KIND_RAFT => match Message::parse_from_bytes(&payload) {
                        Ok(m) => {
                            let _ = q.events.try_send(Event::Raft(m));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable raft message; closing link");
                            break;
                        }
                    },
                    KIND_FORWARD if payload.len() >= 8 => {
                        let id = u64::from_be_bytes(payload[..8].try_into().unwrap());
                        let cmd: MetaCommand = match serde_json::from_slice(&payload[8..]) {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(error = %e, "undecodable forwarded command; closing link");
                                break;
                            }
                        };
                        let (q, shard, reply_tx) = (q.clone(), shard.clone(), reply_tx.clone());
                        glommio::spawn_local(async move {
                            let reply: ForwardReply = if q.leader_ready.get() {
                                q.decide_and_commit(&shard, cmd).await
                            } else {
                                q.answer_not_leader(&shard, &cmd)
                            };
                            let mut out = id.to_be_bytes().to_vec();
                            serde_json::to_writer(&mut out, &reply).expect("replies always serialize");
                            let _ = reply_tx.try_send(transport::frame(KIND_FORWARD_REPLY, &out));
                        })
                        .detach();
                    }
                    other => {
                        tracing::warn!(kind = other, "unknown cluster frame; closing link");
                        break;
                    }
                }
            }
            if let Some(p) = sender {
                q.process_closed(p);
            }
            drop(writer_task);
        })
        .detach();
    }
}

/// The message for a configured voter list other than the stored one (Raft ids).
fn voters_refused(
    dir: &std::path::Path,
    me: i32,
    stored: &[u64],
    configured: &[u64],
) -> StartRefused {
    let ids = |v: &[u64]| v.iter().map(|r| node_id(*r)).collect::<Vec<i32>>();
    let not_member = if stored.contains(&raft_id(me)) {
        String::new()
    } else {
        format!("; node.id {me} is not one of them")
    };
    StartRefused(format!(
        "controller.quorum.voters names node ids {:?}, but the metadata log in {} belongs to \
         a cluster whose voters are {:?}{not_member}. Restart with the original \
         controller.quorum.voters: changing the voters by restarting with another list is \
         not supported (this broker would form a quorum of its own and split the cluster)",
        ids(configured),
        dir.display(),
        ids(stored),
    ))
}

fn log_failover(events: &[MetaEvent]) {
    for e in events {
        match e {
            MetaEvent::SetBrokerFenced { id, fenced: true }
                if events.iter().any(
                    |e| matches!(e, MetaEvent::SetBrokerShuttingDown { id: x } if x == id),
                ) =>
            {
                tracing::info!(broker = id, "broker leaving: fenced")
            }
            MetaEvent::SetBrokerFenced { id, fenced: true } => {
                tracing::warn!(
                    broker = id,
                    "broker not heard from within the session timeout: fenced"
                )
            }
            MetaEvent::SetBrokerShuttingDown { id } => {
                tracing::info!(
                    broker = id,
                    "broker in controlled shutdown: moving its partitions"
                )
            }
            MetaEvent::SetBrokerFenced { id, fenced: false } => {
                tracing::info!(broker = id, "broker heard from again: unfenced")
            }
            MetaEvent::ChangePartition {
                name,
                partition,
                state,
            } => tracing::info!(
                topic = %name,
                partition,
                leader = state.leader,
                leader_epoch = state.leader_epoch,
                isr = ?state.isr,
                "partition leadership or in-sync set changed"
            ),
            _ => {}
        }
    }
}

/// On the metadata leader, every `FAILURE_CHECK`: fences brokers not heard from within
/// the session timeout and moves their leaderships, unfences returning ones and gives
/// offline partitions a leader again (`replication::controller`). Decided locally
/// only: a forwarded check would be decided by a leader that may not know liveness.
async fn watch_brokers(q: Rc<Quorum>, shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(FAILURE_CHECK).await;
        if !q.leader_ready.get() || !q.knows_liveness() {
            continue;
        }
        if let Err(f) = q.decide_and_commit(&shard, MetaCommand::CheckBrokers).await {
            tracing::debug!(error = %f.message, "broker failure check not committed");
        }
    }
}
