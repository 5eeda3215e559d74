//! Metadata taking effect: `commit_meta` decides a change and makes it durable (the
//! local metadata log on a single node, Raft in a cluster) and `apply_image` brings each
//! shard's partitions in line with the new image: logs opened and deleted, leadership
//! taken, followers started and stopped.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use super::commands::{MetaCommand, MetaReply};
use super::quorum::Quorum;
use crate::metadata::{Image, TopicMeta};
use crate::segment::{remove, PartitionLog};
use crate::shard::partition::{log_config_for, Transition};
use crate::shard::{Partition, Shard};

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
    let mut deleted: Vec<(String, i32, Rc<Partition>)> = Vec::new();
    for t in gone {
        let parts = shard
            .partitions
            .borrow_mut()
            .remove(t.as_str())
            .unwrap_or_default();
        // Every partition stops being followed before the first await below, so no
        // fetcher sees a followed partition without a log.
        for (i, p) in parts {
            super::fetcher::unfollow(&t, i);
            deleted.push((t.clone(), i, p));
        }
    }
    for (t, i, p) in deleted {
        // Returns once the directory is renamed away; the files go in the background.
        match p.log.delete().await {
            Ok(()) => {
                tracing::info!(topic = %t, partition = i, "partition deleted; removing its data")
            }
            Err(e) => {
                tracing::warn!(topic = %t, partition = i, error = %e, "deleting partition log failed")
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
            let log_config = log_config_for(&topic.configs, &shard.config);
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
                        .or_default()
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

/// At startup, once the metadata image has been replayed from this broker's own durable
/// log: removes, in the background, every directory under `data/topics` that is no
/// partition this broker hosts in that image (a topic deleted while the broker was down
/// or stopped mid-deletion, a partition it is no longer a replica of), and every
/// `*.delete` directory an interrupted deletion left. Each is logged with its bytes.
///
/// Why this deletes nothing still needed:
/// - A partition directory is created only by `apply_image` for an entry this broker
///   applied, and an entry is applied only after it is durable here: the single-node
///   metadata log is fdatasync'd before `apply_image`, and Raft applies only committed
///   entries after persisting the hard state that commits them. Replay applies every
///   committed entry again, so the image it yields includes every change that created a
///   directory before the restart; a directory absent from it belongs to a topic that
///   was deleted, or a replica that moved away, in that same durable history.
/// - `replay_complete` says the replay dropped nothing (no corrupt record cut off with
///   the ones after it) and, in a cluster, reached the persisted commit index. If not,
///   the image may lack entries whose data is here: nothing is removed.
/// - An image with no cluster id comes from an empty log (a metadata directory wiped or
///   replaced while the data stayed): everything would look stray, so nothing is.
/// - It runs before anything else can change the image (single node: before the
///   listeners bind; cluster: before the Raft driver starts), and every stray directory
///   is renamed to a `*.delete` name first, at once, so a topic recreated later under
///   the same name gets a fresh directory and never meets the one being removed.
pub fn remove_stray_dirs(shard: &Shard, replay_complete: bool) {
    let topics_dir = shard.config.data_dir.join("topics");
    let entries = match std::fs::read_dir(&topics_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(dir = %topics_dir.display(), error = %e, "cannot list partition directories; stray ones stay");
            return;
        }
    };
    let image = shard.image();
    let me = shard.config.node_id;
    let hosted: HashSet<String> = image
        .topics
        .values()
        .flat_map(|t| {
            (0..t.owners.len() as i32)
                .filter(|p| t.is_replica(*p, me))
                .map(|p| format!("{}-{p}", t.name))
        })
        .collect();
    let stray: Vec<(String, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| !hosted.contains(name))
        .collect();
    if stray.is_empty() {
        return;
    }
    if !replay_complete || image.cluster_id.is_none() {
        tracing::warn!(
            dirs = stray.len(),
            replay_complete,
            "partition directories not in the metadata image kept: the replayed metadata may be incomplete"
        );
        return;
    }
    for (name, path) in stray {
        if name.ends_with(remove::DELETE_SUFFIX) {
            tracing::info!(dir = %name, "removing the rest of an interrupted partition deletion");
            remove::remove_in_background(path, name);
            continue;
        }
        match remove::rename_for_delete(&path) {
            Ok(renamed) => {
                tracing::info!(partition_dir = %name, "removing partition directory of no partition hosted here (topic deleted or replica moved)");
                remove::remove_in_background(renamed, name);
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "cannot rename stray partition directory; it stays")
            }
        }
    }
}

/// Cluster mode: makes this broker the partition's leader, a follower fetching from
/// the leader, or neither, per the image's state of it.
async fn apply_partition_state(
    shard: &Rc<Shard>,
    topic: &TopicMeta,
    p: i32,
    partition: &Rc<Partition>,
) {
    use super::fetcher;
    let Some(state) = topic.replicas.get(p as usize) else {
        return;
    };
    // A restarted broker's image names it leader of what it led before the crash until
    // its new registration commits (which moves those leaderships): it must not lead on
    // that stale state, at the old epoch, with its replication state lost.
    let me = shard.config.node_id;
    let stale;
    let state = if state.leader == me && !super::registered(&shard.image(), me) {
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
            if let Some(q) = Quorum::of(&s) {
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
