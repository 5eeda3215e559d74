//! The follower side of the partition log: `append_replicated` stores a leader's
//! batches exactly (offsets kept) or refuses them whole; `truncate_to` cuts a divergent
//! tail (KIP-101) across segment rolls, durably, and appends continue after the cut.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use proptest::prelude::*;
use runnel::segment::batch::{compute_crc, split_batches, validate_batch};
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

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 8 << 10,
        index_interval_bytes: 512,
        ..LogConfig::default()
    }
}

async fn open(dir: &std::path::Path, config: &LogConfig) -> Rc<PartitionLog> {
    PartitionLog::open(dir.to_path_buf(), config.clone())
        .await
        .unwrap()
}

/// A batch as a leader stores it: base offset, leader epoch and records set.
fn leader_batch(base: i64, epoch: i32, records: usize, value_len: usize) -> Bytes {
    let vals: Vec<Vec<u8>> = (0..records)
        .map(|k| vec![(base as usize + k) as u8; value_len])
        .collect();
    let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
    let mut b = encode_batch(base, 1_000 + base, &refs).to_vec();
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
    Bytes::from(b)
}

/// Reads the whole log from `from` as raw bytes, batch by batch.
async fn read_all(log: &PartitionLog, from: i64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < log.log_end_offset() {
        let r = log.read(offset, 16 << 10).await.unwrap();
        let bytes: Vec<u8> = r.chunks.concat();
        assert!(
            !bytes.is_empty(),
            "read at {offset} below the end was empty"
        );
        for b in split_batches(&Bytes::from(bytes.clone())).unwrap() {
            let h = validate_batch(&b).unwrap();
            assert!(h.last_offset() >= offset);
            offset = h.last_offset() + 1;
        }
        out.extend_from_slice(&bytes);
    }
    out
}

#[test]
fn replicated_batches_keep_their_offsets_epochs_and_bytes_across_rolls_and_reopen() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config();
        let log = open(dir.path(), &config).await;
        let mut all = Vec::new();
        let mut next = 0i64;
        // Sets of 1..4 batches per call, as fetch responses bring them.
        for call in 0..40usize {
            let mut set = Vec::new();
            for k in 0..(call % 4 + 1) {
                let records = (call + k) % 5 + 1;
                let b = leader_batch(next, (call / 10) as i32, records, 100 + call * 13);
                next += records as i64;
                set.extend_from_slice(&b);
            }
            let got = log
                .append_replicated(Bytes::from(set.clone()))
                .await
                .unwrap();
            assert_eq!(got.log_end_offset, next);
            assert_eq!(log.log_end_offset(), next);
            assert_eq!(log.durable_offset(), next, "durable when it resolves");
            all.extend_from_slice(&set);
        }
        assert!(log.segment_count() > 3, "rolled: {}", log.segment_count());
        assert_eq!(read_all(&log, 0).await, all);
        log.close().await.unwrap();
        let log = open(dir.path(), &config).await;
        assert_eq!(log.log_end_offset(), next);
        assert_eq!(read_all(&log, 0).await, all);
        // A compacted batch (offsets span more than its records) is stored as is.
        let mut b = leader_batch(next, 3, 1, 10).to_vec();
        b[23..27].copy_from_slice(&4i32.to_be_bytes()); // last_offset_delta
        let crc = compute_crc(&b[..61], &b[61..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let got = log.append_replicated(Bytes::from(b.clone())).await.unwrap();
        assert_eq!(got.log_end_offset, next + 5);
        assert_eq!(read_all(&log, next).await, b);
        // Empty input changes nothing.
        let got = log.append_replicated(Bytes::new()).await.unwrap();
        assert_eq!((got.batches, got.log_end_offset), (0, next + 5));
    });
}

#[test]
fn a_gap_an_overlap_or_a_bad_batch_refuses_the_whole_set_and_writes_nothing() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config();
        let log = open(dir.path(), &config).await;
        let first = leader_batch(0, 0, 3, 50);
        log.append_replicated(first.clone()).await.unwrap();
        let good = leader_batch(3, 0, 2, 50);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("gap", leader_batch(4, 0, 1, 50).to_vec()),
            ("overlap", leader_batch(2, 0, 1, 50).to_vec()),
            ("gap after a good batch", {
                [good.as_ref(), leader_batch(6, 0, 1, 50).as_ref()].concat()
            }),
            ("bad crc after a good batch", {
                let mut bad = leader_batch(5, 0, 1, 50).to_vec();
                let n = bad.len();
                bad[n - 1] ^= 1;
                [good.as_ref(), bad.as_slice()].concat()
            }),
            ("bad magic", {
                let mut b = good.to_vec();
                b[16] = 1;
                b
            }),
            ("cut short", good[..good.len() - 3].to_vec()),
        ];
        for (what, bytes) in cases {
            let err = log
                .append_replicated(Bytes::from(bytes))
                .await
                .expect_err(what);
            match what {
                "gap" | "overlap" | "gap after a good batch" => assert!(
                    matches!(err, StorageError::NonContiguous { expected, .. } if expected == 3
                        || (what == "gap after a good batch" && expected == 5)),
                    "{what}: {err}"
                ),
                _ => assert!(
                    matches!(
                        err,
                        StorageError::CorruptBatch(_) | StorageError::InvalidBatch(_)
                    ),
                    "{what}: {err}"
                ),
            }
            assert_eq!(log.log_end_offset(), 3, "{what}: nothing placed");
        }
        assert_eq!(read_all(&log, 0).await, first.to_vec());
        log.close().await.unwrap();
        let log = open(dir.path(), &config).await;
        assert_eq!(log.log_end_offset(), 3, "nothing written");
        log.append_replicated(good.clone()).await.unwrap();
        assert_eq!(read_all(&log, 0).await, [first, good].concat());
    });
}

#[test]
fn truncation_edges_beyond_the_end_below_the_start_and_negative() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config();
        let log = open(dir.path(), &config).await;
        let mut next = 0;
        for _ in 0..30 {
            log.append_replicated(leader_batch(next, 0, 4, 200))
                .await
                .unwrap();
            next += 4;
        }
        let before = read_all(&log, 0).await;
        // At or beyond the end: nothing happens.
        log.truncate_to(next).await.unwrap();
        log.truncate_to(next + 100).await.unwrap();
        assert_eq!(log.log_end_offset(), next);
        assert_eq!(read_all(&log, 0).await, before);
        assert!(matches!(
            log.truncate_to(-1).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // Mid-batch: the straddling batch goes whole.
        log.truncate_to(62).await.unwrap();
        assert_eq!(log.log_end_offset(), 60);
        // Below the log start (inside the first segment): the start follows the end.
        log.delete_records_before(50).await.unwrap();
        let start = log.log_start_offset();
        assert_eq!(start, 50);
        log.truncate_to(49).await.unwrap();
        assert!(log.log_end_offset() <= 49);
        assert_eq!(log.log_start_offset(), log.log_end_offset());
        // Below the first segment: the log restarts, empty, at the offset.
        log.truncate_to(3).await.unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (3, 3));
        assert_eq!(log.segment_count(), 1);
        log.append_replicated(leader_batch(3, 1, 2, 10))
            .await
            .unwrap();
        log.close().await.unwrap();
        let log = open(dir.path(), &config).await;
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (3, 5));
        // A follower far behind the leader's log start starts over there.
        log.truncate_fully_and_start_at(1_000).await.unwrap();
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (1_000, 1_000)
        );
        log.append_replicated(leader_batch(1_000, 2, 1, 10))
            .await
            .unwrap();
        drop(log);
        let log = open(dir.path(), &config).await;
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (1_000, 1_001)
        );
    });
}

#[derive(Clone, Debug)]
enum Op {
    /// A producer append (offsets assigned by the log).
    Produce {
        records: usize,
        value_len: usize,
    },
    /// A follower append of 1..3 batches.
    Replicate {
        batches: usize,
        value_len: usize,
    },
    /// Truncate at (log end * fraction): anywhere, mid-batch too.
    Truncate {
        at: f64,
    },
    Flush,
    /// Close and reopen; `clean = false` drops the log without closing (after
    /// `truncate_to` returned, its effect must be on disk).
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..5, 0usize..3000).prop_map(|(records, value_len)| Op::Produce { records, value_len }),
        8 => (1usize..4, 0usize..3000).prop_map(|(batches, value_len)| Op::Replicate { batches, value_len }),
        3 => (0.0f64..1.0).prop_map(|at| Op::Truncate { at }),
        1 => Just(Op::Flush),
        2 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn truncating_anywhere_then_reopening_leaves_exactly_the_prefix(
        ops in prop::collection::vec(op(), 1..60),
        segment_kib in 4u64..24,
        interval in 0u32..4096,
    ) {
        run(move || async move {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig {
                segment_bytes: segment_kib << 10,
                index_interval_bytes: interval,
                ..LogConfig::default()
            };
            let mut log = open(dir.path(), &config).await;
            // The model: (base, last, stored bytes) per batch.
            let mut model: Vec<(i64, i64, Vec<u8>)> = Vec::new();
            let end = |m: &Vec<(i64, i64, Vec<u8>)>| m.last().map_or(0, |b| b.1 + 1);
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Produce { records, value_len } => {
                        let b = leader_batch(0, 0, *records, value_len / records);
                        let info = log.append(b.clone(), Durability::Written).await.unwrap();
                        assert_eq!(info.base_offset, end(&model), "appends continue at the end");
                        let mut stored = b.to_vec();
                        stored[..8].copy_from_slice(&info.base_offset.to_be_bytes());
                        model.push((info.base_offset, info.last_offset, stored));
                    }
                    Op::Replicate { batches, value_len } => {
                        let mut set = Vec::new();
                        for k in 0..*batches {
                            let base = end(&model);
                            // Epoch 0 like the producer appends (epochs: tests/segment_epoch.rs).
                            let b = leader_batch(base, 0, k + 1, value_len / (k + 1));
                            model.push((base, base + k as i64, b.to_vec()));
                            set.extend_from_slice(&b);
                        }
                        let got = log.append_replicated(Bytes::from(set)).await.unwrap();
                        assert_eq!(got.log_end_offset, end(&model));
                    }
                    Op::Truncate { at } => {
                        let offset = (end(&model) as f64 * at) as i64;
                        log.truncate_to(offset).await.unwrap();
                        // The batch holding `offset` goes whole.
                        model.retain(|b| b.1 < offset);
                        assert_eq!(log.log_end_offset(), end(&model));
                        assert_eq!(log.durable_offset().min(end(&model)), log.durable_offset());
                    }
                    Op::Flush => log.flush().await.unwrap(),
                    Op::Reopen { clean } => {
                        if *clean {
                            log.close().await.unwrap();
                        } else {
                            // Unflushed producer appends may be lost on a crash; make
                            // them durable so the model stays exact.
                            log.flush().await.unwrap();
                        }
                        drop(log);
                        log = open(dir.path(), &config).await;
                    }
                }
                assert_eq!(log.log_end_offset(), end(&model), "after op {i}: {op:?}");
            }
            let want: Vec<u8> = model.iter().flat_map(|b| b.2.iter().copied()).collect();
            assert_eq!(read_all(&log, 0).await, want);
            // Reads from inside the log start at the right batch.
            for b in model.iter().step_by(3) {
                let r = log.read(b.1, 1).await.unwrap().chunks.concat();
                assert_eq!(&r[..b.2.len()], b.2.as_slice());
            }
            log.close().await.unwrap();
            let log = open(dir.path(), &config).await;
            assert_eq!(log.log_end_offset(), end(&model));
            assert_eq!(read_all(&log, 0).await, want);
        });
    }
}
