//! Starting the shards: executors, the channel mesh, metadata replay, partition logs,
//! listeners, and the background retention and compaction timer.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

use super::commands::{MetaCommand, MetaReply};
use super::{Envelope, Partition, Shard};
use crate::config::BrokerConfig;
use crate::metadata::{Image, MetaLog, TopicMeta};
use crate::net;
use crate::segment::PartitionLog;

/// Cross-shard messages queued per shard pair before senders wait.
const MESH_CHANNEL_CAPACITY: usize = 1024;

/// Stall threshold for glommio's detector; its default handler logs the backtrace (through
/// the `log` bridge into our tracing output).
#[derive(Debug)]
struct StallLogger {
    threshold: Duration,
}

impl glommio::StallDetectionHandler for StallLogger {
    fn threshold(&self, _q: glommio::TaskQueueHandle, _max: Duration) -> Option<Duration> {
        Some(self.threshold)
    }
}

/// Logs and counts the times this shard's reactor could not run for the stall
/// threshold: a timer that fires late measures it. This replaces glommio's stall
/// detector by default because that one symbolizes a backtrace on the shard thread at
/// every stall; the first such report loads the binary's debug info, which stalls the
/// shard again and keeps about 200 MiB resident for the life of the process.
const STALL_LOG_INTERVAL: Duration = Duration::from_secs(60);

async fn watch_stalls(shard: Rc<Shard>, threshold: Duration) {
    let tick = (threshold / 2).clamp(Duration::from_millis(1), Duration::from_millis(10));
    // The first stall logs at once, then at most one line per STALL_LOG_INTERVAL with
    // the count and worst since the last: a busy host stalls an idle broker often, and
    // that must not flood the log (the counter has every one).
    let mut last_log: Option<Instant> = None;
    let (mut unlogged, mut worst) = (0u64, Duration::ZERO);
    while !shard.stopping.get() {
        let t = Instant::now();
        glommio::timer::sleep(tick).await;
        let late = t.elapsed().saturating_sub(tick);
        if late < threshold {
            continue;
        }
        let m = &shard.metrics;
        m.stalls.set(m.stalls.get() + 1);
        unlogged += 1;
        worst = worst.max(late);
        if last_log.is_none_or(|l| l.elapsed() >= STALL_LOG_INTERVAL) {
            tracing::warn!(
                shard = shard.id,
                stalls = unlogged,
                worst_ms = worst.as_millis() as u64,
                threshold_ms = threshold.as_millis() as u64,
                "shard stalled: its I/O and timers waited (a task ran that long, or the OS \
                 did not run this thread); --stall-backtraces shows the task"
            );
            last_log = Some(Instant::now());
            (unlogged, worst) = (0, Duration::ZERO);
        }
    }
}

/// Set by the signal thread on SIGTERM/SIGINT; each shard polls it (a flag, not a lock).
static SHUTDOWN_REQUESTED: AtomicBool = AtomicBool::new(false);
/// Set once every shard serves: before that a stop request has nothing to drain.
static SERVING: AtomicBool = AtomicBool::new(false);
/// How often shards look at the shutdown flag.
const SHUTDOWN_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// A graceful stop that takes longer than its parts' own bounds plus this is wedged:
/// the process exits anyway, so SIGTERM always ends it.
const SHUTDOWN_GRACE_EXTRA: Duration = Duration::from_secs(20);

/// What a shard thread reports to the supervisor when it ends.
type ShardEnd = (usize, Result<(), String>);

/// Sends a shard's end to the supervisor when dropped: a normal return, an error, a
/// panic that unwinds, and an executor that never started (its future is dropped
/// unrun) all report, so no failure can leave siblings waiting for it forever.
struct EndReport {
    id: usize,
    tx: std::sync::mpsc::Sender<ShardEnd>,
    result: Option<Result<(), String>>,
}

impl EndReport {
    fn finish(mut self, result: Result<(), String>) {
        self.result = Some(result);
    }
}

impl Drop for EndReport {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or_else(|| {
            Err(if std::thread::panicking() {
                "panicked".to_string()
            } else {
                "its executor did not start".to_string()
            })
        });
        let _ = self.tx.send((self.id, result));
    }
}

/// Handles SIGTERM/SIGINT: the first asks for a graceful stop (or exits at once while
/// the broker is still starting: nothing has been acknowledged that a stop would
/// flush); a second SIGINT, or a stop that overruns its bounds, exits without one.
fn watch_signals(config: &BrokerConfig) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;
    let grace = Duration::from_millis(
        if config.cluster.is_some() && config.controlled_shutdown_enable {
            config.controlled_shutdown_timeout_ms
        } else {
            0
        },
    ) + SHUTDOWN_DRAIN_MAX
        + FETCHERS_STOP_MAX
        + SHUTDOWN_GRACE_EXTRA;
    std::thread::Builder::new()
        .name("runnel-signals".into())
        .spawn(move || {
            let Some(sig) = signals.forever().next() else {
                return;
            };
            if !SERVING.load(Ordering::Acquire) {
                tracing::info!(signal = sig, "shutdown requested while starting: exiting");
                eprintln!("runnel: stopped while starting");
                std::process::exit(0);
            }
            tracing::info!(signal = sig, "shutdown requested: flushing logs");
            SHUTDOWN_REQUESTED.store(true, Ordering::Release);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for sig in signals.forever() {
                    if tx.send(sig).is_err() {
                        return;
                    }
                }
            });
            // A repeated SIGTERM (process managers and scripts resend it) waits for the
            // clean stop; a second Ctrl-C is a person who wants out now.
            let deadline = Instant::now() + grace;
            loop {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(sig) if sig == signal_hook::consts::SIGINT => {
                        tracing::warn!("second interrupt: exiting without a clean stop");
                        break;
                    }
                    Ok(_) => tracing::info!("stop already under way"),
                    Err(_) => {
                        tracing::error!(
                            grace_ms = grace.as_millis() as u64,
                            "graceful stop did not finish in time: exiting without a clean stop"
                        );
                        break;
                    }
                }
            }
            std::process::exit(1);
        })
        .map_err(|e| anyhow::anyhow!("cannot start signal thread: {e}"))?;
    Ok(())
}

/// Runs the broker; blocks the calling thread. Returns (or the process exits) as soon
/// as any shard ends: with an error naming the shard and why if it failed to start or
/// failed later, because a broker missing a shard cannot serve that shard's partitions.
pub fn run(config: BrokerConfig) -> anyhow::Result<()> {
    watch_signals(&config)?;
    let config = Arc::new(config);
    let cpus = core_affinity::get_core_ids()
        .map(|c| c.len())
        .unwrap_or(1)
        .max(1);
    let mesh = MeshBuilder::<Envelope, _>::full(config.cores, MESH_CHANNEL_CAPACITY);
    let (end_tx, end_rx) = std::sync::mpsc::channel::<ShardEnd>();
    let mut handles = Vec::with_capacity(config.cores);
    for id in 0..config.cores {
        let config = config.clone();
        let mesh = mesh.clone();
        let report = EndReport {
            id,
            tx: end_tx.clone(),
            result: None,
        };
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
            .name(&format!("runnel-shard-{id}"))
            .io_memory(config.io_memory_bytes);
        if config.stall_backtraces {
            // glommio symbolizes every stall's backtrace on the shard itself: opt-in.
            builder = builder.detect_stalls(Some(Box::new(StallLogger {
                threshold: Duration::from_millis(config.stall_threshold_ms),
            })));
        }
        let handle = builder
            .spawn(move || async move {
                let r = shard_main(id, config, mesh).await;
                report.finish(r.map_err(|e| format!("{e:#}")));
            })
            .map_err(|e| anyhow::anyhow!("cannot start shard {id}: {e}"))?;
        handles.push(Some(handle));
    }
    drop(end_tx);
    let Ok((id, result)) = end_rx.recv() else {
        anyhow::bail!("every shard ended without a report");
    };
    // The executor's own error (e.g. io_uring setup) is in its thread's result.
    let why = match (result, handles[id].take().map(|h| h.join())) {
        (Ok(()), _) => "stopped".to_string(),
        (Err(_), Some(Err(e))) => e.to_string(),
        (Err(e), _) => e,
    };
    Err(anyhow::anyhow!("shard {id} ended: {why}"))
}

async fn shard_main(
    id: usize,
    config: Arc<BrokerConfig>,
    mesh: MeshBuilder<Envelope, glommio::channels::channel_mesh::Full>,
) -> anyhow::Result<()> {
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|_| anyhow::anyhow!("shard {id}: mesh join failed"))?;
    // The mesh orders peers by executor id; executors are created in shard order, so a
    // shard's mesh index is its id. Everything addressing shards relies on this.
    assert_eq!(
        senders.peer_id(),
        id,
        "mesh peer index must equal the shard id"
    );
    let nshards = config.cores;
    let (meta_log, image) = if id == 0 && config.cluster.is_none() {
        let (log, image) = MetaLog::open(&config.data_dir.join("meta")).map_err(|e| {
            anyhow::anyhow!(
                "cannot open metadata log in {}: {e}",
                config.data_dir.join("meta").display()
            )
        })?;
        (Some(RefCell::new(log)), image)
    } else {
        (None, Image::default())
    };
    let start_ms = crate::now_ms();
    let shard = Rc::new(Shard {
        id,
        nshards,
        config: config.clone(),
        image: RefCell::new(Arc::new(image)),
        partitions: RefCell::default(),
        meta_log,
        quorum: Default::default(),
        meta_lock: glommio::sync::Semaphore::new(1),
        metrics: Default::default(),
        memory: Rc::new(crate::net::memory::MemoryBudget::new(
            config.queued_max_request_bytes_per_shard(),
        )),
        ready: Cell::new(false),
        listener: RefCell::new(None),
        stopping: Cell::new(false),
        sockets: RefCell::default(),
        stop_accepting: RefCell::new(None),
        groups: crate::group::Coordinator::new(),
        senders,
        pending: RefCell::default(),
        next_call_id: Cell::new(0),
        next_producer_id: Cell::new((start_ms << 20) + id as i64),
    });
    glommio::spawn_local(watch_stalls(
        shard.clone(),
        Duration::from_millis(config.stall_threshold_ms.max(1)),
    ))
    .detach();
    for (_peer, stream) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(env) = stream.recv().await {
                shard.on_envelope(env);
            }
        })
        .detach();
    }
    if id == 0 {
        if let Some(cluster) = &config.cluster {
            // Replays the Raft log and applies what is committed on every shard.
            let quorum = crate::replication::quorum::Quorum::start(&shard, cluster).await?;
            let _ = shard.quorum.set(quorum);
        }
        // Hand the replayed image to every shard; each opens the logs it owns.
        let image = shard.image();
        let opened: Vec<usize> = shard
            .invoke_on_all(move |s| {
                let image = image.clone();
                async move { apply_image(&s, image).await }
            })
            .await;
        tracing::info!(
            topics = shard.image().topics.len(),
            partitions = opened.iter().sum::<usize>(),
            recovery_scanned_bytes = crate::segment::recovery::scanned_bytes(),
            "metadata replayed, partition logs open"
        );
        crate::group::store::note_existing_partition_count(&shard);
        // A cluster's id comes with its first registration (see RegisterBroker).
        if config.cluster.is_none() && shard.image().cluster_id.is_none() {
            if let Err(e) = commit_meta(&shard, MetaCommand::EnsureClusterId).await {
                anyhow::bail!("cannot store the cluster id: {e}");
            }
        }
        // Bind shard 0 first so that a port of 0 picks one port, which the rest share.
        let addr = match crate::ports::claim_port(config.listen)
            .await
            .and_then(|()| net::listener::bind(&shard, config.listen))
        {
            Ok(a) => a,
            Err(e) => crate::fatal(&e),
        };
        let bound: Vec<Result<SocketAddr, String>> = shard
            .invoke_on_all(move |s| async move {
                let r = if s.id == 0 {
                    Ok(addr)
                } else {
                    net::listener::bind(&s, addr)
                };
                s.ready.set(true);
                r
            })
            .await;
        if let Some(Err(e)) = bound.into_iter().find(|r| r.is_err()) {
            crate::fatal(&e);
        }
        tracing::info!(%addr, shards = nshards, data_dir = %config.data_dir.display(), "broker ready");
        if let Some(admin) = config.admin_listen {
            if let Some(bound) = net::admin::start(&shard, admin).await {
                println!("runnel: admin on {bound}");
            }
        }
        SERVING.store(true, Ordering::Release);
        // Scripts and tests wait for this line.
        println!("runnel: ready on {addr}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
    // Listeners start only once every log is open, so no request sees a half-open broker.
    while !shard.ready.get() {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let retention = {
        let shard = shard.clone();
        let interval = Duration::from_millis(shard.config.log_retention_check_interval_ms.max(1));
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(interval).await;
                let parts: Vec<Rc<Partition>> = shard
                    .partitions
                    .borrow()
                    .values()
                    .flat_map(|m| m.values().cloned())
                    .collect();
                for p in parts {
                    if let Err(e) = p.log.enforce_retention().await {
                        tracing::warn!(error = %e, "retention failed");
                    }
                    match p.log.compact().await {
                        Ok(s) if s.segments_rewritten > 0 => tracing::debug!(
                            dir = %p.log.dir().display(),
                            segments = s.segments_rewritten,
                            bytes_before = s.bytes_before,
                            bytes_after = s.bytes_after,
                            keys = s.keys,
                            "compacted"
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(dir = %p.log.dir().display(), error = %e, "compaction failed")
                        }
                    }
                }
            }
        })
    };
    retention.detach();
    if config.cluster.is_some() {
        glommio::spawn_local(crate::replication::fetcher::isr_task(shard.clone())).detach();
    }
    if id == 0 {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while !SHUTDOWN_REQUESTED.load(Ordering::Acquire) {
                glommio::timer::sleep(SHUTDOWN_POLL_INTERVAL).await;
            }
            // In a cluster, first hand this broker's leaderships to other in-sync
            // replicas (bounded; see `replication::shutdown`).
            if let Some(q) = shard.quorum.get().cloned() {
                if shard.config.controlled_shutdown_enable {
                    let timeout =
                        Duration::from_millis(shard.config.controlled_shutdown_timeout_ms);
                    crate::replication::shutdown::run(&shard, &q, timeout).await;
                }
            }
            // Graceful stop: every shard stops accepting and reading requests, answers
            // the ones in flight (bounded by SHUTDOWN_DRAIN_MAX), then flushes and closes
            // its logs, and the process exits.
            let open: Vec<u64> = shard
                .invoke_on_all(|s| async move { drain_connections(&s).await })
                .await;
            tracing::info!(
                still_open = open.iter().sum::<u64>(),
                "stopped accepting; in-flight requests answered"
            );
            let closed: Vec<usize> = shard
                .invoke_on_all(|s| async move { close_partitions(&s).await })
                .await;
            tracing::info!(
                partitions = closed.iter().sum::<usize>(),
                "logs flushed and closed; exiting"
            );
            std::process::exit(0);
        })
        .detach();
    }
    net::listener::serve(shard).await
}

/// How long a graceful stop waits for connections to finish their in-flight requests.
const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(10);

/// Stops accepting and reading: the listener and every connection's read side are shut
/// down, so readers see EOF and writers send the responses of requests already read.
/// Waits (bounded) until the connections are gone; returns how many are still open.
async fn drain_connections(shard: &Rc<Shard>) -> u64 {
    shard.stopping.set(true);
    if let Some(stop) = shard.stop_accepting.borrow_mut().take() {
        let _ = stop.send(());
    }
    for fd in shard.sockets.borrow().iter() {
        // SAFETY: shutdown(2) on a socket this shard owns and has not closed (a socket
        // leaves the set before its close).
        unsafe {
            libc::shutdown(*fd, libc::SHUT_RD);
        }
    }
    let deadline = std::time::Instant::now() + SHUTDOWN_DRAIN_MAX;
    while shard.metrics.connections.get() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    shard.metrics.connections.get()
}

/// How long a stop waits for replica fetchers to finish what they are doing (a long
/// poll's answer, a truncation) before closing the logs.
const FETCHERS_STOP_MAX: Duration = Duration::from_secs(2);

/// Flushes and closes every log this shard owns; returns how many.
async fn close_partitions(shard: &Rc<Shard>) -> usize {
    // Replication stops first: a replicated append or truncation must not race a close.
    if !crate::replication::fetcher::stop_all(FETCHERS_STOP_MAX).await {
        tracing::warn!("replica fetchers still busy; closing the logs anyway");
    }
    let parts: Vec<Rc<Partition>> = shard
        .partitions
        .borrow_mut()
        .drain()
        .flat_map(|(_, m)| m.into_values())
        .collect();
    for p in &parts {
        p.snapshot_producer_state().await;
        if let Err(e) = p.log.close().await {
            tracing::error!(dir = %p.log.dir().display(), error = %e, "closing log failed");
        }
    }
    parts.len()
}

/// Brings this shard's open partitions in line with `image`: opens logs of partitions it
/// owns, closes and deletes those of topics that are gone, applies config changes.
/// Returns how many partitions this shard owns afterwards.
pub async fn apply_image(shard: &Rc<Shard>, image: Arc<Image>) -> usize {
    let previous = shard.image.replace(image.clone());
    // Deleted topics: remove their logs.
    let gone: Vec<String> = shard
        .partitions
        .borrow()
        .keys()
        .filter(|t| !image.topics.contains_key(t.as_ref()))
        .map(|t| t.to_string())
        .collect();
    for t in gone {
        let parts = shard
            .partitions
            .borrow_mut()
            .remove(t.as_str())
            .unwrap_or_default();
        for (i, p) in parts {
            crate::replication::fetcher::unfollow(&t, i);
            if let Err(e) = p.log.delete().await {
                tracing::warn!(topic = %t, error = %e, "deleting partition log failed");
            }
        }
    }
    let mut owned = 0;
    for topic in image.topics.values() {
        let configs_changed = previous
            .topic(&topic.name)
            .map(|old| old.configs != topic.configs)
            .unwrap_or(false);
        for p in 0..topic.owners.len() as i32 {
            if shard.owner_of(&topic.owners, p) != Some(shard.id)
                || !topic.is_replica(p, shard.config.node_id)
            {
                continue;
            }
            owned += 1;
            let log_config = super::partition::log_config_for(&topic.configs, &shard.config);
            if let Some(existing) = shard.partition(&topic.name, p) {
                if configs_changed {
                    existing.log.set_config(log_config);
                }
                apply_partition_state(shard, topic, p, &existing).await;
                continue;
            }
            let dir = shard
                .config
                .data_dir
                .join("topics")
                .join(format!("{}-{}", topic.name, p));
            match PartitionLog::open(dir.clone(), log_config).await {
                Ok(log) => {
                    let partition = Partition::new(log);
                    partition.set_producer_id_expiration_ms(shard.config.producer_id_expiration_ms);
                    if let Err(e) = partition.rebuild_producer_state().await {
                        tracing::warn!(dir = %dir.display(), error = %e, "producer state not rebuilt; idempotent retries may duplicate");
                    }
                    let name: Arc<str> = Arc::from(topic.name.as_str());
                    shard
                        .partitions
                        .borrow_mut()
                        .entry(name)
                        .or_insert_with(HashMap::new)
                        .insert(p, partition.clone());
                    apply_partition_state(shard, topic, p, &partition).await;
                }
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot open partition log; partition offline");
                }
            }
        }
    }
    owned
}

/// Cluster mode: makes this broker the partition's leader, a follower fetching from
/// the leader, or neither, per the image's state of it.
async fn apply_partition_state(
    shard: &Rc<Shard>,
    topic: &TopicMeta,
    p: i32,
    partition: &Rc<Partition>,
) {
    use crate::replication::fetcher;
    use crate::shard::partition::Transition;
    let Some(state) = topic.replicas.get(p as usize) else {
        return;
    };
    // A restarted broker's image names it leader of what it led before the crash until
    // its new registration commits (which moves those leaderships): it must not lead on
    // that stale state, at the old epoch, with its replication state lost.
    let me = shard.config.node_id;
    let stale;
    let state = if state.leader == me && !crate::replication::registered(&shard.image(), me) {
        stale = crate::metadata::PartitionState {
            leader: -1,
            ..state.clone()
        };
        &stale
    } else {
        state
    };
    match partition.apply_state(me, state) {
        Transition::Unchanged => {}
        Transition::BecameLeader => {
            fetcher::unfollow(&topic.name, p);
            tracing::info!(topic = %topic.name, partition = p, epoch = state.leader_epoch, "leading partition");
            // Its producer state followed the log while it was a follower; only an
            // interrupted truncation or failed replicated append leaves it to rebuild.
            partition.ensure_producer_state().await;
        }
        Transition::Follow(leader, epoch) => {
            tracing::info!(topic = %topic.name, partition = p, leader, epoch, "following partition");
            fetcher::follow(shard, &topic.name, p, leader, epoch);
        }
        Transition::Offline => fetcher::unfollow(&topic.name, p),
    }
}

/// Decides and commits a metadata change: `cmd` is decided against the current image
/// (under the metadata lock, so check-then-create is atomic) into events plus a reply.
/// On a single node shard 0 decides and appends to the local metadata log; in a cluster
/// the metadata leader decides and the events commit through Raft. Either way the events
/// are durable and applied on every shard of this broker before this returns, so the
/// caller's next request sees them whichever shard it reaches.
pub async fn commit_meta(shard: &Rc<Shard>, cmd: MetaCommand) -> Result<MetaReply, String> {
    shard
        .invoke_on(0, move |s| async move {
            if let Some(q) = s.quorum.get().cloned() {
                return q.commit(&s, cmd).await;
            }
            let _permit = s
                .meta_lock
                .acquire_permit(1)
                .await
                .map_err(|e| e.to_string())?;
            let mut image = (*s.image()).clone();
            let (events, result) = cmd.decide(&image, None);
            if events.is_empty() {
                return Ok(result);
            }
            for e in &events {
                image.apply(e);
            }
            let log = s.meta_log.as_ref().expect("shard 0 owns the metadata log");
            log.borrow_mut()
                .append(&events)
                .map_err(|e| format!("metadata log write failed: {e}"))?;
            let image = Arc::new(image);
            s.invoke_on_all(move |s| {
                let image = image.clone();
                async move { apply_image(&s, image).await }
            })
            .await;
            Ok(result)
        })
        .await
}

/// Assigns new partitions to shards round robin from a per-topic starting shard (a hash
/// of the name), so many one-partition topics still spread over the cores.
pub fn place_partitions(nshards: usize, first_partition: u32, count: u32, topic: &str) -> Vec<u32> {
    let seed = crc32c::crc32c(topic.as_bytes()) as usize;
    (0..count)
        .map(|i| ((seed + (first_partition + i) as usize) % nshards) as u32)
        .collect()
}

pub fn new_topic(
    nshards: usize,
    name: &str,
    partitions: u32,
    configs: BTreeMap<String, String>,
) -> TopicMeta {
    TopicMeta {
        name: name.to_string(),
        id: rand::random::<u128>() | 1,
        owners: place_partitions(nshards, 0, partitions, name),
        configs,
        internal: name.starts_with("__"),
        replicas: Vec::new(),
    }
}
