//! Controlled shutdown (Kafka's ControlledShutdown; KRaft's BrokerHeartbeat with
//! `wantShutDown`): a cluster broker that is told to stop (SIGTERM) hands its work to
//! the others before it goes, so clients see a leader change, not seconds of errors
//! until the controller's session timeout fences it.
//!
//! On shard 0, before the connections are drained (`shard::runtime`), bounded by
//! `controlled.shutdown.timeout.ms`:
//! 1. Stop appending: produce to partitions this broker leads is answered
//!    NOT_LEADER_OR_FOLLOWER (`leaving`), and clients retry.
//! 2. Wait (at most `QUIESCE_MAX`) until the in-sync followers have everything this
//!    broker appended, so in-flight acks=all requests are answered with success and
//!    the new leaders have every batch an idempotent producer sent.
//! 3. Ask the controller (`MetaCommand::ControlledShutdown`) to fence this broker,
//!    take it out of every in-sync set and give each partition it leads to another
//!    in-sync replica (epoch + 1), and wait until that is applied here: acks=all
//!    requests still waiting are answered NOT_LEADER_OR_FOLLOWER, and clients move.
//! 4. If this broker leads the metadata quorum, hand Raft leadership to a peer.
//!
//! Skipped when every other broker is fenced or leaving, or none has been heard from
//! (nobody to hand over to, and no quorum to commit with). Whatever does not finish in time is left to the session
//! timeout, as after a crash.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::quorum::{Quorum, BROKER_SESSION_TIMEOUT};
use crate::replication::commands::{MetaCommand, MetaReply};
use crate::shard::partition::Role;
use crate::shard::Shard;
use crate::time::with_timeout;

/// Set once a controlled shutdown starts: this process appends nothing more to the
/// partitions it leads. A flag read on every shard, like the shutdown request itself.
static LEAVING: AtomicBool = AtomicBool::new(false);

/// Whether produce to partitions this broker leads is refused (controlled shutdown).
#[inline]
pub fn leaving() -> bool {
    LEAVING.load(Ordering::Relaxed)
}

/// Longest wait for the followers to catch up before leadership moves: a follower that
/// is dead but still in sync would hold the high watermark until it is dropped.
const QUIESCE_MAX: Duration = Duration::from_secs(2);
/// Pause between looks at the followers' progress and between refused requests.
const POLL: Duration = Duration::from_millis(10);
const RETRY: Duration = Duration::from_millis(100);

/// Runs steps 1–4 above on shard 0; returns when done or when `timeout` has passed.
pub async fn run(shard: &Rc<Shard>, q: &Rc<Quorum>, timeout: Duration) {
    let started = Instant::now();
    let deadline = started + timeout;
    let me = shard.config.node_id;
    let image = shard.image();
    if !super::registered(&image, me) {
        tracing::info!("controlled shutdown skipped: this broker is not registered yet");
        return;
    }
    // The last broker of a cluster being stopped has nobody to hand over to, and no
    // quorum to commit with: waiting for one would only delay its stop.
    let others = image
        .brokers
        .keys()
        .filter(|b| **b != me && !image.fenced.contains(b) && !image.shutting_down.contains(b))
        .count();
    if others == 0 || q.peers_heard(BROKER_SESSION_TIMEOUT).is_empty() {
        tracing::info!("controlled shutdown skipped: no other broker is up");
        return;
    }
    tracing::info!(
        timeout_ms = timeout.as_millis() as u64,
        "controlled shutdown: moving leaderships to other in-sync replicas"
    );
    LEAVING.store(true, Ordering::Relaxed);

    let quiesce_until = deadline.min(Instant::now() + QUIESCE_MAX);
    let behind = loop {
        let behind: usize = shard
            .invoke_on_all(|s| async move { unreplicated(&s) })
            .await
            .into_iter()
            .sum();
        if behind == 0 || Instant::now() >= quiesce_until {
            break behind;
        }
        glommio::timer::sleep(POLL).await;
    };
    if behind > 0 {
        tracing::warn!(
            partitions = behind,
            "controlled shutdown: followers did not catch up in time; moving leadership anyway"
        );
    }

    let cmd = MetaCommand::ControlledShutdown {
        id: me,
        incarnation: super::incarnation(),
    };
    let moved = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match with_timeout(left, q.commit(shard, cmd.clone())).await {
            Some(Ok(MetaReply::ControlledShutdown(Ok(n)))) => break Some(n),
            Some(Ok(MetaReply::ControlledShutdown(Err(e)))) => {
                tracing::warn!(error = %e, "controlled shutdown refused by the controller");
                break None;
            }
            Some(Ok(other)) => {
                tracing::error!(reply = ?other, "controlled shutdown: unexpected reply");
                break None;
            }
            Some(Err(e)) if Instant::now() + RETRY < deadline => {
                tracing::debug!(error = %e, "controlled shutdown not committed; retrying");
                glommio::timer::sleep(RETRY).await;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "controlled shutdown not committed in time");
                break None;
            }
            None => {
                tracing::warn!("controlled shutdown not committed in time");
                break None;
            }
        }
    };
    let handed_over = q.leader() != Some(me) || q.hand_over_leadership(deadline).await;
    match moved {
        Some(n) => tracing::info!(
            leaderships_moved = n,
            metadata_leader_elsewhere = handed_over,
            ms = started.elapsed().as_millis() as u64,
            "controlled shutdown done"
        ),
        None => tracing::warn!(
            ms = started.elapsed().as_millis() as u64,
            "controlled shutdown incomplete: the session timeout moves the rest"
        ),
    }
}

/// Partitions this shard leads whose high watermark is below the log end: appended
/// here, not yet on every in-sync replica.
fn unreplicated(shard: &Shard) -> usize {
    shard
        .partitions
        .borrow()
        .values()
        .flat_map(|m| m.values())
        .filter(|p| p.role() == Some(Role::Leader) && p.high_watermark() < p.log.log_end_offset())
        .count()
}
