//! Partition log behaviour through its public API: append / read round trips, rolls,
//! reopen, bad input, timestamps, retention and DeleteRecords.

use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use runnel::segment::batch::{patch_batch, split_batches, validate_batch};
use runnel::segment::testing::encode_batch;
use runnel::segment::{Durability, LogConfig, PartitionLog, StorageError, TimestampType};

/// Runs a test body on its own glommio executor (io_memory below RLIMIT_MEMLOCK).
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
        segment_bytes: 16 << 10,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

/// What a stored batch looks like: the original with its base offset patched.
fn stored(batch: &Bytes, base: i64) -> Vec<u8> {
    let p = patch_batch(batch, base, None);
    [p.header.as_ref(), p.body.as_ref()].concat()
}

async fn read_all(log: &PartitionLog, from: i64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < log.log_end_offset() {
        let r = log.read(offset, 64 << 10).await.unwrap();
        assert!(
            !r.chunks.is_empty(),
            "read at {offset} below end returned nothing"
        );
        let bytes: Vec<u8> = r.chunks.concat();
        // Walk the returned batches to find where the next read starts.
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
fn appended_batches_read_back_identically_from_cache_and_disk() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), small_config())
            .await
            .unwrap();
        let mut expected = Vec::new();
        for i in 0..200usize {
            let vals: Vec<Vec<u8>> = (0..(i % 3 + 1))
                .map(|k| value(i + k, 10 + i * 7 % 300))
                .collect();
            let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
            let b = encode_batch(0, 1000 + i as i64, &refs);
            let d = if i % 2 == 0 {
                Durability::Durable
            } else {
                Durability::Written
            };
            let info = log.append(b.clone(), d).await.unwrap();
            assert_eq!(info.base_offset, log.log_end_offset() - refs.len() as i64);
            expected.extend(stored(&b, info.base_offset));
        }
        assert!(log.segment_count() > 1, "small segments roll");
        assert_eq!(read_all(&log, 0).await, expected);
        log.close().await.unwrap();
        let end = log.log_end_offset();
        // Sealed segments are cut to their block-padded size (preallocation released).
        let mut logs: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        logs.pop();
        for p in logs {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(
                len % 4096 == 0 && len > 0 && len <= (16 << 10) + 4096,
                "{p:?}: {len}"
            );
        }

        let log = PartitionLog::open(dir.path().to_path_buf(), small_config())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log, 0).await, expected, "after reopen, from disk");
        // A read in the middle of a batch returns that whole batch.
        let r = log.read(5, 1).await.unwrap();
        let first = validate_batch(&r.chunks.concat()).unwrap();
        assert!(first.base_offset <= 5 && first.last_offset() >= 5);
        let info = log
            .append(
                encode_batch(0, 0, &[b"after".as_slice()]),
                Durability::Durable,
            )
            .await
            .unwrap();
        assert_eq!(info.base_offset, end);
    });
}

#[test]
fn read_range_checks() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), LogConfig::default())
            .await
            .unwrap();
        assert!(log.read(0, 100).await.unwrap().chunks.is_empty());
        assert!(matches!(
            log.read(1, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        log.append(
            encode_batch(0, 0, &[b"a".as_slice(), b"b"]),
            Durability::Written,
        )
        .await
        .unwrap();
        assert_eq!(
            log.read(1, 100).await.unwrap().chunks.concat().len(),
            encode_batch(0, 0, &[b"a".as_slice(), b"b"]).len()
        );
        assert!(log.read(2, 100).await.unwrap().chunks.is_empty());
        assert!(matches!(
            log.read(-1, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
    });
}

#[test]
fn bad_batches_are_refused_and_nothing_is_written() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let log = PartitionLog::open(path.clone(), LogConfig::default())
            .await
            .unwrap();
        let good = encode_batch(0, 0, &[b"good".as_slice()]);
        log.append(good.clone(), Durability::Durable).await.unwrap();

        let mut bad_crc = good.to_vec();
        let n = bad_crc.len();
        bad_crc[n - 2] ^= 1;
        let e = log
            .append(Bytes::from(bad_crc), Durability::Durable)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::CorruptBatch(_)), "{e}");
        assert_eq!(e.kafka_error_code(), 2);

        let mut bad_magic = good.to_vec();
        bad_magic[16] = 1;
        let e = log
            .append(Bytes::from(bad_magic), Durability::Durable)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::InvalidBatch(_)), "{e}");

        let mut lying = good.to_vec();
        lying[8..12].copy_from_slice(&1000i32.to_be_bytes());
        let e = log
            .append(Bytes::from(lying.clone()), Durability::Durable)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::CorruptBatch(_)), "{e}");
        assert!(split_batches(&Bytes::from(lying)).is_err());

        let e = log
            .append(Bytes::from_static(&[0u8; 7]), Durability::Durable)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::CorruptBatch(_)), "{e}");

        let small = LogConfig {
            max_message_bytes: 100,
            ..LogConfig::default()
        };
        log.set_config(small);
        let big = encode_batch(0, 0, &[vec![0u8; 200].as_slice()]);
        let e = log.append(big, Durability::Durable).await.unwrap_err();
        assert!(matches!(e, StorageError::BatchTooLarge { .. }), "{e}");
        assert_eq!(e.kafka_error_code(), 10);

        assert_eq!(log.log_end_offset(), 1);
        log.close().await.unwrap();
        let log = PartitionLog::open(path, LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 1);
        assert_eq!(
            log.read(0, 1 << 20).await.unwrap().chunks.concat(),
            stored(&good, 0)
        );
    });
}

#[test]
fn log_append_time_sets_max_timestamp() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            message_timestamp_type: TimestampType::LogAppendTime,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.path().to_path_buf(), config)
            .await
            .unwrap();
        let info = log
            .append(encode_batch(0, 5, &[b"x".as_slice()]), Durability::Durable)
            .await
            .unwrap();
        assert!(info.log_append_time_ms > 1_600_000_000_000);
        let h = validate_batch(&log.read(0, 1000).await.unwrap().chunks.concat()).unwrap();
        assert_eq!(h.max_timestamp, info.log_append_time_ms);
        assert!(h.is_log_append_time());
    });
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), small_config())
            .await
            .unwrap();
        for i in 0..300i64 {
            // two records per batch: timestamps 10*i and 10*i + 1
            log.append(
                encode_batch(0, 10 * i, &[value(i as usize, 50).as_slice(), b"y"]),
                Durability::Written,
            )
            .await
            .unwrap();
        }
        log.flush().await.unwrap();
        let check = |log: Rc<PartitionLog>| async move {
            assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some((0, 0)));
            // The batch's second record, not its base offset.
            assert_eq!(log.offset_for_timestamp(1).await.unwrap(), Some((1, 1)));
            assert_eq!(log.offset_for_timestamp(2).await.unwrap(), Some((2, 10)));
            assert_eq!(
                log.offset_for_timestamp(1234).await.unwrap(),
                Some((248, 1240))
            );
            assert_eq!(
                log.offset_for_timestamp(2991).await.unwrap(),
                Some((599, 2991))
            );
            assert_eq!(log.offset_for_timestamp(2992).await.unwrap(), None);
            log
        };
        let log = check(log).await;
        check(reopen(dir.path(), log).await).await;
    });
}

async fn reopen(dir: &Path, log: Rc<PartitionLog>) -> Rc<PartitionLog> {
    log.close().await.unwrap();
    PartitionLog::open(dir.to_path_buf(), small_config())
        .await
        .unwrap()
}

#[test]
fn delete_records_moves_log_start_durably_and_drops_whole_segments() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), small_config())
            .await
            .unwrap();
        for i in 0..200usize {
            log.append(
                encode_batch(0, 0, &[value(i, 500).as_slice()]),
                Durability::Written,
            )
            .await
            .unwrap();
        }
        log.flush().await.unwrap();
        let segments = log.segment_count();
        assert!(segments > 3);
        assert!(matches!(
            log.delete_records_before(201).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(log.delete_records_before(150).await.unwrap(), 150);
        assert!(log.segment_count() < segments);
        assert!(matches!(
            log.read(149, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let r = log.read(150, 100).await.unwrap();
        assert_eq!(validate_batch(&r.chunks.concat()).unwrap().base_offset, 150);
        // Moving backwards is a no-op.
        assert_eq!(log.delete_records_before(10).await.unwrap(), 150);
        let log = reopen(dir.path(), log).await;
        assert_eq!(log.log_start_offset(), 150);
        assert_eq!(log.log_end_offset(), 200);
    });
}

#[test]
fn retention_deletes_old_sealed_segments_but_never_the_active_one() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = small_config();
        config.retention_bytes = 40 << 10;
        let log = PartitionLog::open(dir.path().to_path_buf(), config.clone())
            .await
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for i in 0..400usize {
            log.append(
                encode_batch(0, now, &[value(i, 500).as_slice()]),
                Durability::Written,
            )
            .await
            .unwrap();
        }
        log.flush().await.unwrap();
        log.enforce_retention().await.unwrap();
        let kept = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count();
        assert_eq!(kept, log.segment_count());
        assert!(
            log.segment_count() <= 4,
            "about 40 KiB of 16 KiB segments remain"
        );
        assert!(log.log_start_offset() > 0);
        let r = log.read(log.log_start_offset(), 100).await.unwrap();
        assert_eq!(
            validate_batch(&r.chunks.concat()).unwrap().base_offset,
            log.log_start_offset()
        );

        // Time: everything is older than 1 ms... except the active segment stays.
        config.retention_bytes = -1;
        config.retention_ms = 0;
        log.set_config(config);
        std::thread::sleep(std::time::Duration::from_millis(5));
        log.enforce_retention().await.unwrap();
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.log_end_offset(), 400);
        let start = log.log_start_offset();
        let log = reopen(dir.path(), log).await;
        assert_eq!(log.log_start_offset(), start);
    });
}

#[test]
fn concurrent_durable_appends_share_flushes_and_keep_call_order() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), LogConfig::default())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..64usize {
            let log = log.clone();
            let b = encode_batch(0, 0, &[value(i, 100).as_slice()]);
            tasks.push(glommio::spawn_local(async move {
                log.append(b, Durability::Durable)
                    .await
                    .unwrap()
                    .base_offset
            }));
        }
        let mut offsets = Vec::new();
        for t in tasks {
            offsets.push(t.await);
        }
        assert_eq!(offsets, (0..64).collect::<Vec<i64>>());
        assert_eq!(log.durable_offset(), 64);
    });
}

#[test]
fn a_backlog_larger_than_the_write_buffer_is_written_in_disjoint_rounds() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 3 << 20,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.path().to_path_buf(), config.clone())
            .await
            .unwrap();
        let mut expected = Vec::new();
        // ~12 MiB of odd-sized batches, mostly Written: buffers fill and rotate with a
        // partial tail block, background writes and backpressure kick in, segments roll.
        for i in 0..2400usize {
            let b = encode_batch(0, i as i64, &[value(i, 4000 + i * 13 % 1500).as_slice()]);
            let d = if i % 500 == 499 {
                Durability::Durable
            } else {
                Durability::Written
            };
            let info = log.append(b.clone(), d).await.unwrap();
            expected.extend(stored(&b, info.base_offset));
        }
        assert_eq!(read_all(&log, 0).await, expected);
        log.flush().await.unwrap();
        drop(log); // crash after the flush: everything must be there
        let log = PartitionLog::open(dir.path().to_path_buf(), config)
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 2400);
        assert_eq!(read_all(&log, 0).await, expected);
    });
}

#[test]
fn segments_roll_by_age() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_ms: 1,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.path().to_path_buf(), config.clone())
            .await
            .unwrap();
        for i in 0..4usize {
            log.append(
                encode_batch(0, 0, &[value(i, 10).as_slice()]),
                Durability::Durable,
            )
            .await
            .unwrap();
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(log.segment_count(), 4);
        drop(log);
        let log = PartitionLog::open(dir.path().to_path_buf(), config)
            .await
            .unwrap();
        assert_eq!(log.segment_count(), 4);
        assert_eq!(log.log_end_offset(), 4);
        let names: Vec<String> = (0..4).map(|i| format!("{i:020}.log")).collect();
        for n in names {
            assert!(dir.path().join(&n).exists(), "{n}");
        }
    });
}

#[test]
fn flush_policy_syncs_written_appends_by_count_and_by_time() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush_messages: 10,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.path().to_path_buf(), config)
            .await
            .unwrap();
        for i in 0..9usize {
            log.append(
                encode_batch(0, 0, &[value(i, 10).as_slice()]),
                Durability::Written,
            )
            .await
            .unwrap();
        }
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            log.durable_offset(),
            0,
            "below flush.messages nothing is synced"
        );
        log.append(
            encode_batch(0, 0, &[b"tenth".as_slice()]),
            Durability::Written,
        )
        .await
        .unwrap();
        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(log.durable_offset(), 10);

        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush_ms: 10,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.path().to_path_buf(), config)
            .await
            .unwrap();
        log.append(encode_batch(0, 0, &[b"x".as_slice()]), Durability::Written)
            .await
            .unwrap();
        assert_eq!(log.durable_offset(), 0);
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(log.durable_offset(), 1);
    });
}

#[test]
fn a_dropped_durable_append_neither_wedges_nor_tears_the_log() {
    run(|| async {
        use futures::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), LogConfig::default())
            .await
            .unwrap();
        let first = encode_batch(0, 0, &[value(1, 3000).as_slice()]);
        // Polled once (offset assigned, flush round started), then abandoned.
        assert!(log
            .append(first.clone(), Durability::Durable)
            .now_or_never()
            .is_none());
        assert_eq!(log.log_end_offset(), 1);
        let second = encode_batch(0, 0, &[value(2, 3000).as_slice()]);
        let info = log
            .append(second.clone(), Durability::Durable)
            .await
            .unwrap();
        assert_eq!(info.base_offset, 1);
        assert_eq!(log.durable_offset(), 2);
        drop(log);
        let log = PartitionLog::open(dir.path().to_path_buf(), LogConfig::default())
            .await
            .unwrap();
        let mut want = stored(&first, 0);
        want.extend(stored(&second, 1));
        assert_eq!(read_all(&log, 0).await, want);
    });
}

#[test]
fn closed_and_deleted_logs_refuse_work() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topic-0");
        let log = PartitionLog::open(path.clone(), LogConfig::default())
            .await
            .unwrap();
        log.append(encode_batch(0, 0, &[b"x".as_slice()]), Durability::Written)
            .await
            .unwrap();
        log.close().await.unwrap();
        let e = log
            .append(encode_batch(0, 0, &[b"y".as_slice()]), Durability::Written)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::Closed));
        assert_eq!(e.kafka_error_code(), 6);
        assert!(matches!(log.read(0, 10).await, Err(StorageError::Closed)));

        let log = PartitionLog::open(path.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 1, "close flushed the Written append");
        log.delete().await.unwrap();
        assert!(!path.exists());
        assert!(log
            .append(encode_batch(0, 0, &[b"z".as_slice()]), Durability::Durable)
            .await
            .is_err());
    });
}

#[test]
fn durable_appends_one_at_a_time_go_o_dsync_without_an_fdatasync() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), small_config())
            .await
            .unwrap();
        // Unaligned sizes: every round after the first rewrites a partial tail block,
        // and rolls (16 KiB segments) start new files.
        let mut batches = Vec::new();
        for i in 0..40usize {
            let b = encode_batch(0, 0, &[value(i, 700 + i * 37).as_slice()]);
            let info = log.append(b.clone(), Durability::Durable).await.unwrap();
            assert_eq!(log.durable_offset(), info.last_offset + 1);
            batches.push(b);
        }
        let stats = log.take_flush_stats();
        assert!(
            stats.round_ns.len() >= 40,
            "one round per append: {}",
            stats.round_ns.len()
        );
        // Each round's single write went through the O_DSYNC handle (at most the very
        // first rounds of a segment, which start with an empty buffer, may differ).
        assert!(
            stats.fdatasync_ns.len() <= 4,
            "{} fdatasyncs for {} rounds",
            stats.fdatasync_ns.len(),
            stats.round_ns.len()
        );
        assert!(log.segment_count() > 2, "the appends rolled segments");
        let log = reopen(dir.path(), log).await;
        assert_eq!(log.log_end_offset(), 40);
        let mut expected = Vec::new();
        for (i, b) in batches.iter().enumerate() {
            expected.extend(stored(b, i as i64));
        }
        assert_eq!(read_all(&log, 0).await, expected);
        log.close().await.unwrap();
    });
}

/// Producer-state snapshot files (`<offset>.snapshot`) follow the log: the newest
/// three are kept, a truncation below one removes it (and a snapshot taken before a
/// truncation never lands), the log start moving past one removes it, an emptied log
/// has none, and a reopened log drops those past its recovered end.
#[test]
fn producer_snapshots_are_kept_within_the_log() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), small_config())
            .await
            .unwrap();
        for i in 0..100usize {
            log.append(
                encode_batch(0, 0, &[value(i, 500).as_slice()]),
                Durability::Written,
            )
            .await
            .unwrap();
        }
        log.flush().await.unwrap();
        let token = log.producer_snapshot_token();
        for offset in [10, 20, 40, 60, 80] {
            assert!(log
                .write_producer_snapshot(offset, token, format!("s{offset}").as_bytes())
                .await
                .unwrap());
        }
        assert_eq!(log.producer_snapshot_offsets(), vec![40, 60, 80]);
        assert_eq!(log.read_producer_snapshot(60).unwrap(), b"s60");
        assert!(
            !log.write_producer_snapshot(101, token, b"x").await.unwrap(),
            "past the log end"
        );

        log.truncate_to(70).await.unwrap();
        assert_eq!(log.producer_snapshot_offsets(), vec![40, 60]);
        assert!(
            !log.write_producer_snapshot(65, token, b"x").await.unwrap(),
            "taken before the truncation"
        );
        let token = log.producer_snapshot_token();
        assert!(log
            .write_producer_snapshot(70, token, b"s70")
            .await
            .unwrap());
        assert_eq!(log.producer_snapshot_offsets(), vec![40, 60, 70]);

        log.delete_records_before(50).await.unwrap();
        assert_eq!(log.producer_snapshot_offsets(), vec![60, 70]);

        // One past the end, as a crash that lost the batches it covers leaves it.
        std::fs::write(dir.path().join(format!("{:020}.snapshot", 90)), b"s90").unwrap();
        let log = reopen(dir.path(), log).await;
        assert_eq!(log.producer_snapshot_offsets(), vec![60, 70]);

        log.truncate_fully_and_start_at(500).await.unwrap();
        assert!(log.producer_snapshot_offsets().is_empty());
        log.close().await.unwrap();
    });
}
