//! Consumer groups in a cluster: a group's coordinator is the broker leading its
//! `__consumer_offsets` partition (`store::partition_for`), so coordination moves with
//! that partition's leadership.
//!
//! - FindCoordinator answers that leader (`coordinator`).
//! - Group requests reach the group's shard on any broker; there `ensure` answers
//!   NOT_COORDINATOR unless this broker leads the partition, and loads the partition's
//!   groups (replaying the local replica) the first time it is asked under a leader
//!   epoch; requests wait for the load up to `LOAD_WAIT`, then get
//!   COORDINATOR_LOAD_IN_PROGRESS (clients retry).
//! - A shard drops the groups of partitions it no longer leads, or leads under a newer
//!   epoch (its log may have changed while another broker led it), within a tick.
//!
//! `ensure` and the group operation after it run in one step of the shard's executor
//! (no await in between once loaded), so an image change cannot slip between the
//! leadership check and the operation. On a single node none of this runs.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::store::{self, OFFSETS_TOPIC};
use super::{codes, Coordinator};
use crate::metadata::{BrokerMeta, Image};
use crate::shard::Shard;

/// Kafka's NOT_COORDINATOR: the client looks the coordinator up again.
pub const NOT_COORDINATOR: i16 = 16;
/// How long a request waits for its partition's groups to load before it is told
/// COORDINATOR_LOAD_IN_PROGRESS.
const LOAD_WAIT: Duration = Duration::from_secs(2);
/// How often a shard looks for partitions it stopped leading.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Per shard: which `__consumer_offsets` partitions' groups are in memory.
pub struct Leadership {
    /// Partition → the leader epoch it was loaded under.
    loaded: RefCell<HashMap<i32, i32>>,
    load_lock: glommio::sync::Semaphore,
    watching: Cell<bool>,
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership {
            loaded: RefCell::default(),
            load_lock: glommio::sync::Semaphore::new(1),
            watching: Cell::new(false),
        }
    }
}

/// (partition, leader, leader epoch) of `group`'s offsets partition in `image`, as
/// broker `me` sees it. A restarted broker's replayed image names it leader of what it
/// led before it stopped until its new registration commits (every leadership change
/// since is then applied, as in `replication::apply::apply_partition_state`): until then it is no
/// leader (-1), so it neither coordinates nor names itself coordinator on that image.
fn placement(image: &Image, group: &str, me: i32) -> Option<(i32, i32, i32)> {
    let topic = image.topic(OFFSETS_TOPIC)?;
    let p = store::partition_for(group, topic.partition_count());
    let state = topic.replicas.get(p as usize)?;
    let leader = if state.leader == me && !crate::replication::registered(image, me) {
        -1
    } else {
        state.leader
    };
    Some((p, leader, state.leader_epoch))
}

/// The broker coordinating `group` as broker `me` sees it: the leader of its offsets
/// partition, with the address it registered. `Err` is the FindCoordinator error code.
pub fn coordinator(image: &Image, group: &str, me: i32) -> Result<BrokerMeta, i16> {
    match placement(image, group, me) {
        Some((_, leader, _)) if leader >= 0 => image
            .brokers
            .get(&leader)
            .cloned()
            .ok_or(codes::COORDINATOR_NOT_AVAILABLE),
        _ => Err(codes::COORDINATOR_NOT_AVAILABLE),
    }
}

/// Whether this broker may act for `group` now, loading its partition's groups first
/// if needed. Runs on the group's coordinator shard. Always `Ok` on a single node.
pub async fn ensure(shard: &Rc<Shard>, group: &str) -> Result<(), i16> {
    if shard.config.cluster.is_none() {
        return Ok(());
    }
    start_watch(shard);
    let deadline = Instant::now() + LOAD_WAIT;
    loop {
        let (p, leader, epoch) = placement(&shard.image(), group, shard.config.node_id)
            .ok_or(codes::COORDINATOR_NOT_AVAILABLE)?;
        if leader != shard.config.node_id {
            return Err(NOT_COORDINATOR);
        }
        let lead = &Coordinator::of(shard).cluster;
        if lead.loaded.borrow().get(&p) == Some(&epoch) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let permit = crate::time::with_timeout(left, lead.load_lock.acquire_permit(1)).await;
        let Some(Ok(_permit)) = permit else {
            return Err(codes::COORDINATOR_LOAD_IN_PROGRESS);
        };
        // Loaded by the request that held the lock, or leadership moved meanwhile.
        let (p2, leader2, epoch2) = placement(&shard.image(), group, shard.config.node_id)
            .ok_or(codes::COORDINATOR_NOT_AVAILABLE)?;
        if (p2, leader2, epoch2) != (p, leader, epoch) {
            continue;
        }
        if lead.loaded.borrow().get(&p) == Some(&epoch) {
            return Ok(());
        }
        let started = Instant::now();
        match load(shard, p).await {
            Ok(n) => {
                // Leadership may have moved while the replay ran; the watcher drops it.
                lead.loaded.borrow_mut().insert(p, epoch);
                tracing::info!(
                    shard = shard.id,
                    partition = p,
                    leader_epoch = epoch,
                    groups = n,
                    ms = started.elapsed().as_millis() as u64,
                    "became coordinator: groups of {OFFSETS_TOPIC}-{p} loaded"
                );
            }
            Err(e) => {
                tracing::warn!(shard = shard.id, partition = p, error = %e, "loading groups failed");
                return Err(codes::COORDINATOR_LOAD_IN_PROGRESS);
            }
        }
    }
}

/// Replays partition `p` (this broker's replica) into this shard's groups, replacing
/// whatever of that partition was in memory. Returns how many groups it holds.
async fn load(shard: &Rc<Shard>, p: i32) -> Result<usize, String> {
    let found = super::read_groups(shard, &[p]).await?;
    drop_partition(shard, p);
    super::install_groups(shard, found);
    Ok(Coordinator::of(shard)
        .groups
        .borrow()
        .keys()
        .filter(|id| in_partition(shard, id, p))
        .count())
}

fn in_partition(shard: &Shard, group: &str, p: i32) -> bool {
    shard
        .image()
        .topic(OFFSETS_TOPIC)
        .is_some_and(|t| store::partition_for(group, t.partition_count()) == p)
}

/// Forgets this shard's groups of partition `p`; members parked in a join or sync are
/// answered (COORDINATOR_NOT_AVAILABLE) and look the coordinator up again.
fn drop_partition(shard: &Shard, p: i32) {
    let Some(n) = shard
        .image()
        .topic(OFFSETS_TOPIC)
        .map(|t| t.partition_count())
    else {
        return;
    };
    Coordinator::of(shard)
        .groups
        .borrow_mut()
        .retain(|id, _| store::partition_for(id, n) != p);
}

/// Starts this shard's watcher once: every tick it drops the groups of partitions this
/// broker no longer leads (or leads under a newer epoch), and any group whose partition
/// is not loaded (created by a request that raced a leadership change).
fn start_watch(shard: &Rc<Shard>) {
    let lead = &Coordinator::of(shard).cluster;
    if lead.watching.replace(true) {
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(WATCH_INTERVAL).await;
            let image = shard.image();
            let Some(topic) = image.topic(OFFSETS_TOPIC) else {
                continue;
            };
            let me = shard.config.node_id;
            let lost: Vec<i32> = Coordinator::of(&shard)
                .cluster
                .loaded
                .borrow()
                .iter()
                .filter(|(p, epoch)| {
                    topic
                        .replicas
                        .get(**p as usize)
                        .is_none_or(|s| s.leader != me || s.leader_epoch != **epoch)
                })
                .map(|(p, _)| *p)
                .collect();
            for p in lost {
                Coordinator::of(&shard)
                    .cluster
                    .loaded
                    .borrow_mut()
                    .remove(&p);
                drop_partition(&shard, p);
                tracing::info!(
                    shard = shard.id,
                    partition = p,
                    "no longer coordinator: groups of {OFFSETS_TOPIC}-{p} dropped"
                );
            }
            let n = topic.partition_count();
            let coordinator = Coordinator::of(&shard);
            let loaded = coordinator.cluster.loaded.borrow();
            Coordinator::of(&shard)
                .groups
                .borrow_mut()
                .retain(|id, _| loaded.contains_key(&store::partition_for(id, n)));
        }
    })
    .detach();
}
