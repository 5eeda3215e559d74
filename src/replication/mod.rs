//! Replication. A cluster's metadata — brokers, topics, partition replica
//! sets, leaders, leader epochs, in-sync sets — is the same event log a single node
//! keeps in `crate::metadata`, replicated by Raft (raft-rs) among the voters of
//! `controller.quorum.voters` (`quorum`). Without voters a broker is a single node:
//! none of this runs, it leads every partition at epoch 0, and metadata stays in
//! `data/meta/metadata.log`. Design and the choice of Raft crate: `README.md`.

pub mod apply;
pub mod commands;
pub mod controller;
pub mod fetcher;
pub mod internal_topic;
pub mod placement;
pub mod quorum;
pub mod raft_log;
pub mod shutdown;
pub mod topics;
pub mod transport;

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use crate::metadata::Image;

/// The metadata leader's node id as last seen by shard 0 (-1: none known). Any shard
/// reads it for Metadata / DescribeCluster; it is a hint, like Kafka's controller id.
static CONTROLLER_ID: AtomicI32 = AtomicI32::new(-1);

pub fn controller_id() -> Option<i32> {
    let id = CONTROLLER_ID.load(Ordering::Relaxed);
    (id >= 0).then_some(id)
}

fn set_controller(id: i32) {
    CONTROLLER_ID.store(id, Ordering::Relaxed);
}

/// This process's incarnation: registered with the broker's address, so the controller
/// tells a restart (a new one) from the same process (`controller.rs`).
pub fn incarnation() -> u64 {
    static INCARNATION: OnceLock<u64> = OnceLock::new();
    *INCARNATION.get_or_init(|| rand::random::<u64>() | 1)
}

/// Whether `image` holds this process's own registration of broker `node`.
pub fn registered(image: &Image, node: i32) -> bool {
    image
        .brokers
        .get(&node)
        .is_some_and(|b| b.incarnation == incarnation())
}

/// A start refused because of an operator mistake that would split or confuse the
/// cluster (a changed voter list, a node id another live process has). The message says
/// what was found and what to do; `main` exits with the usage code (2) for it, as for
/// a bad setting, since restarting it unchanged cannot help.
#[derive(Debug)]
pub struct StartRefused(pub String);

impl std::fmt::Display for StartRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartRefused {}

/// raft-rs logs through slog; this forwards its records to our tracing output.
pub struct SlogToTracing;

impl slog::Drain for SlogToTracing {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let msg = record.msg().to_string();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}"),
            slog::Level::Info => tracing::info!(target: "raft", "{msg}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{msg}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{msg}"),
        }
        Ok(())
    }
}
