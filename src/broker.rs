//! The broker: wires the layers into one running process on every shard — the request
//! memory budget and group coordinator installed, the metadata replayed (through Raft in
//! a cluster) and applied, logs opened, listeners bound once all are open — and stops it
//! on SIGTERM: leaderships handed over, requests in flight answered, logs flushed.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::BrokerConfig;
use crate::group::Coordinator;
use crate::net;
use crate::net::memory::MemoryBudget;
use crate::replication::apply;
use crate::replication::commands::MetaCommand;
use crate::replication::quorum::{Quorum, ReplicaFetchServer};
use crate::shard::{runtime, Shard};

/// Set by the signal thread on SIGTERM/SIGINT; each shard polls it (a flag, not a lock).
static SHUTDOWN_REQUESTED: AtomicBool = AtomicBool::new(false);
/// Set once every shard serves: before that a stop request has nothing to drain.
static SERVING: AtomicBool = AtomicBool::new(false);
/// How often shards look at the shutdown flag.
const SHUTDOWN_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// A graceful stop that takes longer than its parts' own bounds plus this is wedged:
/// the process exits anyway, so SIGTERM always ends it.
const SHUTDOWN_GRACE_EXTRA: Duration = Duration::from_secs(20);

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
    ) + runtime::SHUTDOWN_DRAIN_MAX
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
    runtime::run(Arc::new(config), shard_main)
}

async fn shard_main(shard: Rc<Shard>) -> anyhow::Result<()> {
    let (id, nshards, config) = (shard.id, shard.nshards, shard.config.clone());
    shard.services.install(Rc::new(MemoryBudget::new(
        config.queued_max_request_bytes_per_shard(),
    )));
    shard.services.install(Rc::new(Coordinator::new()));
    if id == 0 {
        if let Some(cluster) = &config.cluster {
            // Replays the Raft log and applies what is committed on every shard.
            let fetch_server: ReplicaFetchServer = Rc::new(|shard, stream| {
                Box::pin(net::connection::handle_replica_fetcher(shard, stream))
            });
            let quorum = Quorum::start(&shard, cluster, fetch_server).await?;
            shard.services.install(quorum.clone());
            // Before ready: a second process with a live broker's node id stops here.
            quorum.register_at_start(&shard).await?;
        }
        // Hand the replayed image to every shard; each opens the logs it owns.
        let image = shard.image();
        let opened: Vec<usize> = shard
            .invoke_on_all(move |s| {
                let image = image.clone();
                async move { apply::apply_image(&s, image).await }
            })
            .await;
        tracing::info!(
            topics = shard.image().topics.len(),
            partitions = opened.iter().sum::<usize>(),
            recovery_scanned_bytes = crate::segment::recovery::scanned_bytes(),
            "metadata replayed, partition logs open"
        );
        crate::group::store::note_existing_partition_count(&shard);
        if config.cluster.is_none() {
            // Before the listeners bind nothing else changes the image: directories of
            // no partition in it can go (see `remove_stray_dirs`). A cluster does this
            // in `Quorum::start`, before its Raft driver runs.
            let complete = shard
                .meta_log
                .as_ref()
                .is_some_and(|l| l.borrow().replay_dropped_bytes() == 0);
            apply::remove_stray_dirs(&shard, complete);
        }
        // A cluster's id comes with its first registration (see RegisterBroker).
        if config.cluster.is_none() && shard.image().cluster_id.is_none() {
            if let Err(e) = apply::commit_meta(&shard, MetaCommand::EnsureClusterId).await {
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
    runtime::wait_ready(&shard).await;
    runtime::maintain_logs(&shard);
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
            if let Some(q) = Quorum::of(&shard) {
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
                .invoke_on_all(|s| async move { runtime::drain_connections(&s).await })
                .await;
            tracing::info!(
                still_open = open.iter().sum::<u64>(),
                "stopped accepting; in-flight requests answered"
            );
            let closed: Vec<usize> = shard
                .invoke_on_all(|s| async move {
                    // Replication stops first: a replicated append or truncation must not
                    // race a close.
                    if !crate::replication::fetcher::stop_all(FETCHERS_STOP_MAX).await {
                        tracing::warn!("replica fetchers still busy; closing the logs anyway");
                    }
                    runtime::close_partitions(&s).await
                })
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

/// How long a stop waits for replica fetchers to finish what they are doing (a long
/// poll's answer, a truncation) before closing the logs.
const FETCHERS_STOP_MAX: Duration = Duration::from_secs(2);
