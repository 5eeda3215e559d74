//! Leader epochs in the partition log (KIP-101 / KIP-279): the leader stamps its
//! epoch into produced batches, followers keep the epochs they copy, and the
//! leader-epoch cache answers OffsetForLeaderEpoch with Kafka's `endOffsetFor`
//! semantics, across truncation, reopen, crash-trimmed checkpoints and rebuilds.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use proptest::prelude::*;
use runnel::segment::batch::{split_batches, validate_batch};
use runnel::segment::epoch::{LeaderEpochCache, CHECKPOINT_FILE};
use runnel::segment::testing::encode_batch;
use runnel::segment::{Durability, LogConfig, PartitionLog, StorageError};

fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

fn cache_of(entries: &[(i32, i64)]) -> LeaderEpochCache {
    let mut c = LeaderEpochCache::default();
    for &(e, s) in entries {
        assert!(c.assign(e, s));
    }
    c
}

/// Kafka's LeaderEpochFileCacheTest cases for endOffsetFor.
#[test]
fn end_offset_for_follows_kafka() {
    let c = cache_of(&[(1, 10), (3, 20), (5, 30)]);
    let end = 40;
    assert_eq!(
        c.end_offset_for(5, end),
        (5, 40),
        "latest epoch: the log end"
    );
    assert_eq!(
        c.end_offset_for(4, end),
        (3, 30),
        "gap: floor epoch, next start"
    );
    assert_eq!(c.end_offset_for(3, end), (3, 30));
    assert_eq!(c.end_offset_for(2, end), (1, 20));
    assert_eq!(c.end_offset_for(1, end), (1, 20));
    assert_eq!(
        c.end_offset_for(0, end),
        (0, 10),
        "older than all: first start"
    );
    assert_eq!(c.end_offset_for(6, end), (-1, -1), "newer than all");
    assert_eq!(c.end_offset_for(-1, end), (-1, -1), "undefined");
    assert_eq!(LeaderEpochCache::default().end_offset_for(0, 5), (-1, -1));
}

#[test]
fn assign_keeps_entries_monotonic_and_truncation_trims_them() {
    let mut c = cache_of(&[(1, 5), (3, 20)]);
    assert!(!c.assign(3, 25), "same epoch, later start: nothing new");
    assert!(c.assign(2, 8), "lower epoch drops the later entries");
    assert_eq!(c.entries(), &[(1, 5), (2, 8)]);
    assert!(c.assign(1, 3));
    assert_eq!(c.entries(), &[(1, 3)]);
    let mut c = cache_of(&[(0, 0), (2, 10), (4, 20)]);
    assert!(!c.truncate_from_end(21));
    assert!(c.truncate_from_end(20));
    assert_eq!(c.entries(), &[(0, 0), (2, 10)]);
    let mut c = cache_of(&[(0, 0), (2, 10), (4, 20)]);
    assert!(c.truncate_from_start(15));
    assert_eq!(c.entries(), &[(2, 15), (4, 20)]);
    assert!(!c.truncate_from_start(15));
    assert!(c.truncate_from_start(20));
    assert_eq!(c.entries(), &[(4, 20)]);
}

#[test]
fn the_checkpoint_round_trips_and_a_damaged_one_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(LeaderEpochCache::load(dir.path()).unwrap(), None);
    let c = cache_of(&[(0, 0), (7, 100)]);
    let d = dir.path().to_path_buf();
    let written = c.clone();
    run(move || async move { written.persist(&d).await.unwrap() });
    let text = std::fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap();
    assert_eq!(text, "0\n2\n0 0\n7 100\n", "Kafka's format");
    assert_eq!(LeaderEpochCache::load(dir.path()).unwrap(), Some(c));
    for bad in [
        "1\n0\n",
        "0\n2\n0 0\n",
        "0\n2\n3 10\n2 20\n",
        "0\n1\n0 x\n",
        "0\n1\n0 0 0\n",
        "",
        "0\n99999999999\n",
    ] {
        std::fs::write(dir.path().join(CHECKPOINT_FILE), bad).unwrap();
        assert_eq!(LeaderEpochCache::load(dir.path()).unwrap(), None, "{bad:?}");
    }
}

fn epoch_batch(base: i64, epoch: i32, records: usize, value_len: usize) -> Bytes {
    let vals: Vec<Vec<u8>> = (0..records).map(|k| vec![k as u8; value_len]).collect();
    let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
    let mut b = encode_batch(base, 0, &refs).to_vec();
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
    Bytes::from(b)
}

/// (base offset, epoch) of every batch in the log.
async fn batch_epochs(log: &PartitionLog) -> Vec<(i64, i32)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = Bytes::from(log.read(offset, 64 << 10).await.unwrap().chunks.concat());
        for b in split_batches(&bytes).unwrap() {
            let h = validate_batch(&b).unwrap();
            out.push((h.base_offset, h.partition_leader_epoch));
            offset = h.last_offset() + 1;
        }
    }
    out
}

#[test]
fn a_leader_stamps_its_epoch_and_refuses_to_write_under_a_stale_one() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig::default();
        let log = PartitionLog::open(dir.path().to_path_buf(), config.clone())
            .await
            .unwrap();
        // Clients send -1 (or anything): the leader's epoch is what is stored.
        log.append(epoch_batch(0, -1, 2, 10), Durability::Written)
            .await
            .unwrap();
        log.set_leader_epoch(3);
        assert_eq!(
            log.end_offset_for_epoch(0),
            (0, 2),
            "epoch 3 starts at the log end"
        );
        assert_eq!(log.end_offset_for_epoch(3), (3, 2));
        log.append(epoch_batch(0, 99, 1, 10), Durability::Durable)
            .await
            .unwrap();
        assert_eq!(batch_epochs(&log).await, vec![(0, 0), (2, 3)]);
        assert_eq!(log.epoch_entries(), vec![(0, 0), (3, 2)]);
        assert_eq!(log.end_offset_for_epoch(3), (3, 3));
        assert_eq!(log.end_offset_for_epoch(2), (0, 2));
        // A follower copy of epoch 5 arrives; a write under epoch 3 is now stale.
        log.append_replicated(epoch_batch(3, 5, 1, 10))
            .await
            .unwrap();
        let err = log
            .append(epoch_batch(0, 0, 1, 10), Durability::Written)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::StaleLeaderEpoch {
                    epoch: 3,
                    latest: 5
                }
            ),
            "{err}"
        );
        assert_eq!(err.kafka_error_code(), 6);
        assert_eq!(log.log_end_offset(), 4, "nothing written");
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), config)
            .await
            .unwrap();
        assert_eq!(log.epoch_entries(), vec![(0, 0), (3, 2), (5, 3)]);
        assert_eq!(log.latest_epoch(), Some(5));
    });
}

#[test]
fn checkpoint_entries_past_the_recovered_end_are_trimmed_on_open() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig::default();
        let log = PartitionLog::open(dir.path().to_path_buf(), config.clone())
            .await
            .unwrap();
        log.set_leader_epoch(2);
        log.append(epoch_batch(0, -1, 4, 10), Durability::Durable)
            .await
            .unwrap();
        log.close().await.unwrap();
        // The entry of an epoch whose first batch never reached the disk.
        std::fs::write(dir.path().join(CHECKPOINT_FILE), "0\n2\n2 0\n5 4\n").unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), config.clone())
            .await
            .unwrap();
        assert_eq!(log.epoch_entries(), vec![(2, 0)]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap(),
            "0\n1\n2 0\n",
            "rewritten"
        );
        // DeleteRecords moves the first entry's start with the log start.
        log.set_leader_epoch(3);
        log.append(epoch_batch(0, -1, 1, 10), Durability::Durable)
            .await
            .unwrap();
        log.delete_records_before(2).await.unwrap();
        assert_eq!(log.epoch_entries(), vec![(2, 2), (3, 4)]);
    });
}

#[derive(Clone, Debug)]
enum Op {
    /// Become leader of a higher epoch (by `bump`) and produce.
    Produce {
        bump: i32,
        records: usize,
    },
    /// Copy 1..3 batches from a leader of a higher epoch (by `bump`).
    Replicate {
        bump: i32,
        batches: usize,
    },
    Truncate {
        at: f64,
    },
    /// Clean close or drop; `lose_checkpoint` deletes the file first (a rebuild).
    Reopen {
        clean: bool,
        lose_checkpoint: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0i32..3, 1usize..4).prop_map(|(bump, records)| Op::Produce { bump: bump / 2, records }),
        6 => (0i32..3, 1usize..4).prop_map(|(bump, batches)| Op::Replicate { bump: bump / 2, batches }),
        2 => (0.0f64..1.0).prop_map(|at| Op::Truncate { at }),
        2 => (any::<bool>(), any::<bool>()).prop_map(|(clean, lose_checkpoint)| Op::Reopen { clean, lose_checkpoint }),
    ]
}

/// The oracle: epoch transitions of the batch list, and Kafka's endOffsetFor computed
/// from the batches directly (the end of epoch e = base of the first batch of a later
/// epoch, or the log end).
fn transitions(batches: &[(i64, i64, i32)]) -> Vec<(i32, i64)> {
    let mut out: Vec<(i32, i64)> = Vec::new();
    for &(base, _, epoch) in batches {
        if out.last().is_none_or(|l| l.0 != epoch) {
            out.push((epoch, base));
        }
    }
    out
}

/// `current`: the leader's epoch, which counts as starting at the log end when it is
/// newer than every batch (Kafka's leader records it at election).
fn oracle_end_offset(
    batches: &[(i64, i64, i32)],
    current: i32,
    requested: i32,
    end: i64,
) -> (i32, i64) {
    let mut batches = batches.to_vec();
    if batches.last().is_none_or(|b| b.2 < current) {
        batches.push((end, end, current));
    }
    let latest = batches.last().expect("one at least").2;
    if requested < 0 || requested > latest {
        return (-1, -1);
    }
    if requested == latest {
        return (latest, end);
    }
    let next = batches
        .iter()
        .find(|b| b.2 > requested)
        .expect("a later epoch");
    match batches.iter().rev().find(|b| b.2 <= requested) {
        Some(floor) => (floor.2, next.0),
        None => (requested, next.0),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_epoch_cache_matches_the_batches_through_truncation_reopen_and_rebuild(
        ops in prop::collection::vec(op(), 1..40),
        segment_kib in 4u64..16,
    ) {
        run(move || async move {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig { segment_bytes: segment_kib << 10, index_interval_bytes: 512, ..LogConfig::default() };
            let open = |config: LogConfig| {
                let path = dir.path().to_path_buf();
                async move { PartitionLog::open(path, config).await.unwrap() }
            };
            let mut log: Rc<PartitionLog> = open(config.clone()).await;
            let mut epoch = 0i32;
            // (base, last, epoch) per batch.
            let mut model: Vec<(i64, i64, i32)> = Vec::new();
            let end = |m: &Vec<(i64, i64, i32)>| m.last().map_or(0, |b| b.1 + 1);
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Produce { bump, records } => {
                        epoch += bump;
                        log.set_leader_epoch(epoch);
                        let info = log.append(epoch_batch(0, -1, *records, 900), Durability::Written).await.unwrap();
                        model.push((info.base_offset, info.last_offset, epoch));
                    }
                    Op::Replicate { bump, batches } => {
                        epoch += bump;
                        let mut set = Vec::new();
                        for k in 0..*batches {
                            let base = end(&model);
                            set.extend_from_slice(&epoch_batch(base, epoch, k + 1, 700));
                            model.push((base, base + k as i64, epoch));
                        }
                        log.append_replicated(Bytes::from(set)).await.unwrap();
                    }
                    Op::Truncate { at } => {
                        let offset = (end(&model) as f64 * at) as i64;
                        log.truncate_to(offset).await.unwrap();
                        model.retain(|b| b.1 < offset);
                    }
                    Op::Reopen { clean, lose_checkpoint } => {
                        if *clean {
                            log.close().await.unwrap();
                        } else {
                            log.flush().await.unwrap();
                        }
                        drop(log);
                        if *lose_checkpoint {
                            let _ = std::fs::remove_file(dir.path().join(CHECKPOINT_FILE));
                        }
                        log = open(config.clone()).await;
                        log.set_leader_epoch(epoch);
                    }
                }
                let stored: Vec<(i64, i32)> = model.iter().map(|b| (b.0, b.2)).collect();
                assert_eq!(batch_epochs(&log).await, stored, "after op {i}: {op:?}");
                assert_eq!(log.epoch_entries(), transitions(&model), "after op {i}: {op:?}");
                // As the leader of the current epoch, and of the latest one in the log.
                for current in [model.last().map_or(0, |b| b.2), epoch] {
                    log.set_leader_epoch(current);
                    for requested in -1..=epoch + 1 {
                        assert_eq!(
                            log.end_offset_for_epoch(requested),
                            oracle_end_offset(&model, current, requested, end(&model)),
                            "epoch {requested}, leader of {current}, after op {i}: {op:?}"
                        );
                    }
                }
            }
        });
    }
}

#[test]
/// Regression: after a reopen the write buffer starts small and rotates often, so a
/// segment's written end falls inside a batch; a read below the cache reached it and
/// re-read the same window forever instead of leaving that batch to the cache.
fn reads_below_the_cache_stop_at_a_batch_cut_by_the_written_end() {
    for kib in 4u64..16 {
        run(move || async move {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig {
                segment_bytes: kib << 10,
                index_interval_bytes: 512,
                ..LogConfig::default()
            };
            let mut log = PartitionLog::open(dir.path().to_path_buf(), config.clone())
                .await
                .unwrap();
            let mut next = 0i64;
            for (k, n) in [(1, 1usize), (1, 2), (1, 1)] {
                let mut set = Vec::new();
                for j in 0..n {
                    set.extend_from_slice(&epoch_batch(next, k, j + 1, 700));
                    next += j as i64 + 1;
                }
                log.append_replicated(Bytes::from(set)).await.unwrap();
            }
            for lose in [true, false, false, false] {
                log.flush().await.unwrap();
                drop(log);
                if lose {
                    let _ = std::fs::remove_file(dir.path().join(CHECKPOINT_FILE));
                }
                log = PartitionLog::open(dir.path().to_path_buf(), config.clone())
                    .await
                    .unwrap();
                log.set_leader_epoch(1);
            }
            let mut epoch = 1;
            for (bump, records) in [(0, 2usize), (1, 2), (0, 1), (1, 2), (1, 3)] {
                epoch += bump;
                log.set_leader_epoch(epoch);
                log.append(epoch_batch(0, -1, records, 900), Durability::Written)
                    .await
                    .unwrap();
                let mut offset = 0;
                while offset < log.log_end_offset() {
                    let r = log.read(offset, 64 << 10).await.unwrap();
                    let bytes = Bytes::from(r.chunks.concat());
                    let parts = split_batches(&bytes).unwrap();
                    assert!(!parts.is_empty());
                    for b in parts {
                        offset = validate_batch(&b).unwrap().last_offset() + 1;
                    }
                }
            }
            // Close before the directory goes: a write-behind round may still be
            // creating the next segment's file, and glommio panics if the file
            // vanishes between its open and its statfs.
            log.close().await.unwrap();
        });
    }
}

/// The checkpoint is written after the batch that starts an epoch (off the append
/// path): a crash in between leaves it an epoch behind the log, and open must notice.
#[test]
fn a_checkpoint_behind_the_last_batch_is_rebuilt_on_open() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig::default();
        let log = PartitionLog::open(dir.path().to_path_buf(), config.clone())
            .await
            .unwrap();
        log.append_replicated(epoch_batch(0, 1, 2, 100))
            .await
            .unwrap();
        log.append_replicated(epoch_batch(2, 3, 1, 100))
            .await
            .unwrap();
        assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 2)]);
        log.close().await.unwrap();
        drop(log);
        std::fs::write(dir.path().join(CHECKPOINT_FILE), "0\n1\n1 0\n").unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), config)
            .await
            .unwrap();
        assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 2)]);
        assert_eq!(log.end_offset_for_epoch(1), (1, 2));
        log.close().await.unwrap();
    });
}
