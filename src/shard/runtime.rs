//! The thread-per-core runtime: one pinned glommio executor per shard, the channel mesh
//! between them, each shard's `Shard`, and their supervision — shards start and stop as
//! one unit: the first to end, however it ends, ends the process with its reason. What
//! a shard runs once it exists is the caller's (`crate::broker` wires the layers).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

use super::{Envelope, Partition, Shard};
use crate::config::BrokerConfig;
use crate::metadata::{Image, MetaLog};

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

/// What a shard thread reports to the supervisor when it ends. The error keeps its type,
/// so the caller can tell an operator mistake from a failure.
type ShardEnd = (usize, anyhow::Result<()>);

/// Sends a shard's end to the supervisor when dropped: a normal return, an error, a
/// panic that unwinds, and an executor that never started (its future is dropped
/// unrun) all report, so no failure can leave siblings waiting for it forever.
struct EndReport {
    id: usize,
    tx: std::sync::mpsc::Sender<ShardEnd>,
    result: Option<anyhow::Result<()>>,
}

impl EndReport {
    fn finish(mut self, result: anyhow::Result<()>) {
        self.result = Some(result);
    }
}

impl Drop for EndReport {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or_else(|| {
            Err(anyhow::anyhow!(if std::thread::panicking() {
                "panicked"
            } else {
                "its executor did not start"
            }))
        });
        let _ = self.tx.send((self.id, result));
    }
}

/// Starts one executor per shard, builds each shard's `Shard` and runs `shard_main` on
/// it; blocks the calling thread. Returns as soon as any shard ends: with an error naming
/// the shard and why if it failed to start or failed later, because a broker missing a
/// shard cannot serve that shard's partitions.
pub fn run<F, Fut>(config: Arc<BrokerConfig>, shard_main: F) -> anyhow::Result<()>
where
    F: Fn(Rc<Shard>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = anyhow::Result<()>> + 'static,
{
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
        let shard_main = shard_main.clone();
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
                let r = match start_shard(id, config, mesh).await {
                    Ok(shard) => shard_main(shard).await,
                    Err(e) => Err(e),
                };
                report.finish(r);
            })
            .map_err(|e| anyhow::anyhow!("cannot start shard {id}: {e}"))?;
        handles.push(Some(handle));
    }
    drop(end_tx);
    let Ok((id, result)) = end_rx.recv() else {
        anyhow::bail!("every shard ended without a report");
    };
    // The executor's own error (e.g. io_uring setup) is in its thread's result.
    match (result, handles[id].take().map(|h| h.join())) {
        (Ok(()), _) => Err(anyhow::anyhow!("shard {id} ended: stopped")),
        (Err(_), Some(Err(e))) => Err(anyhow::anyhow!("shard {id} ended: {e}")),
        (Err(e), _) => Err(e.context(format!("shard {id} ended"))),
    }
}

/// Joins the mesh, builds this shard's `Shard` (shard 0 of a single node opens the
/// metadata log) and starts its message pump and stall watcher.
async fn start_shard(
    id: usize,
    config: Arc<BrokerConfig>,
    mesh: MeshBuilder<Envelope, glommio::channels::channel_mesh::Full>,
) -> anyhow::Result<Rc<Shard>> {
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
    let start_ms = crate::time::now_ms();
    let shard = Rc::new(Shard {
        id,
        nshards,
        config: config.clone(),
        image: RefCell::new(Arc::new(image)),
        partitions: RefCell::default(),
        meta_log,
        meta_lock: glommio::sync::Semaphore::new(1),
        metrics: Default::default(),
        ready: Cell::new(false),
        listener: RefCell::new(None),
        stopping: Cell::new(false),
        sockets: RefCell::default(),
        stop_accepting: RefCell::new(None),
        services: Default::default(),
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
    Ok(shard)
}

/// Enforces retention and compacts this shard's logs every
/// `log.retention.check.interval.ms`, for the life of the shard.
pub fn maintain_logs(shard: &Rc<Shard>) {
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
}

/// Waits until every shard has opened its logs (`Shard::ready`): listeners start only
/// then, so no request sees a half-open broker.
pub async fn wait_ready(shard: &Shard) {
    while !shard.ready.get() {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// How long a graceful stop waits for connections to finish their in-flight requests.
pub const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(10);

/// Stops accepting and reading: the listener and every connection's read side are shut
/// down, so readers see EOF and writers send the responses of requests already read.
/// Waits (bounded) until the connections are gone; returns how many are still open.
pub async fn drain_connections(shard: &Rc<Shard>) -> u64 {
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

/// Flushes and closes every log this shard owns; returns how many. Whatever appends to
/// them (replication) must have stopped first.
pub async fn close_partitions(shard: &Rc<Shard>) -> usize {
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
