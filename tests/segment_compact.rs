//! Log compaction through `PartitionLog`'s public API: the last record per key survives
//! with its offset, readers across a compaction never go back in time for a key, and
//! compacted logs (and crashes mid-compaction) reopen cleanly.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use runnel::segment::batch::{split_batches, validate_batch};
use runnel::segment::compact::{decode_batch, Codec};
use runnel::segment::testing::encode_keyed_batch;
use runnel::segment::{Durability, LogConfig, PartitionLog};

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

fn compact_config() -> LogConfig {
    LogConfig {
        segment_bytes: 8 << 10,
        index_interval_bytes: 512,
        cleanup_compact: true,
        cleanup_delete: false,
        min_cleanable_dirty_ratio: 0.0,
        ..LogConfig::default()
    }
}

/// (offset, key, value) of every record from `from` to the end.
async fn read_records(log: &PartitionLog, from: i64) -> Vec<(i64, String, Option<String>)> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < log.log_end_offset() {
        let r = log.read(offset, 16 << 10).await.unwrap();
        assert!(!r.chunks.is_empty(), "read at {offset} returned nothing");
        let joined = Bytes::from(r.chunks.concat());
        for b in split_batches(&joined).unwrap() {
            let h = validate_batch(&b).unwrap();
            let d = decode_batch(&b).unwrap();
            for rec in &d.refs {
                let off = d.offset(rec);
                if off >= offset {
                    let k = String::from_utf8(d.key(rec).unwrap().to_vec()).unwrap();
                    let v = rec.value.is_some().then(|| {
                        // value follows the key; decode it from the record bytes
                        value_of(&d.records[rec.bytes.clone()])
                    });
                    out.push((off, k, v));
                }
            }
            offset = offset.max(h.last_offset() + 1);
        }
    }
    out
}

/// The value of one framed record (tests only write keyed records without headers).
fn value_of(rec: &[u8]) -> String {
    fn varint(b: &[u8], p: &mut usize) -> i64 {
        let mut u = 0u64;
        let mut shift = 0;
        loop {
            let x = b[*p];
            *p += 1;
            u |= u64::from(x & 0x7f) << shift;
            if x & 0x80 == 0 {
                return ((u >> 1) as i64) ^ -((u & 1) as i64);
            }
            shift += 7;
        }
    }
    let mut p = 0;
    varint(rec, &mut p); // length
    p += 1; // attributes
    varint(rec, &mut p); // timestamp delta
    varint(rec, &mut p); // offset delta
    let k = varint(rec, &mut p);
    p += k as usize;
    let v = varint(rec, &mut p) as usize;
    String::from_utf8(rec[p..p + v].to_vec()).unwrap()
}

fn codec(i: usize) -> Codec {
    [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ][i % 5]
}

/// Appends `n` records over `keys` keys, 10 per batch; value = "k<key>-<seq>".
async fn fill(log: &PartitionLog, n: usize, keys: usize) -> HashMap<String, String> {
    fill_at(log, n, keys, 1_000).await
}

/// `fill` with batch timestamps from `ts_base_ms` on (one ms per batch).
async fn fill_at(
    log: &PartitionLog,
    n: usize,
    keys: usize,
    ts_base_ms: i64,
) -> HashMap<String, String> {
    let mut last = HashMap::new();
    for chunk in 0..n / 10 {
        let recs: Vec<_> = (0..10)
            .map(|j| {
                let i = chunk * 10 + j;
                let k = format!("k{}", (i * 7919) % keys);
                let v = format!("{k}-{i}");
                last.insert(k.clone(), v.clone());
                (Some(k.into_bytes()), Some(v.into_bytes()))
            })
            .collect();
        let b = encode_keyed_batch(0, ts_base_ms + chunk as i64, &recs, codec(chunk));
        log.append(b, Durability::Written).await.unwrap();
    }
    log.flush().await.unwrap();
    last
}

fn active_base(dir: &Path) -> i64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")
                .and_then(|s| s.parse::<i64>().ok())
        })
        .max()
        .unwrap()
}

/// Every key at most once below `active`, and every key's last record equals `last`.
fn check_compacted(
    recs: &[(i64, String, Option<String>)],
    active: i64,
    last: &HashMap<String, String>,
) {
    let mut seen_sealed = HashMap::new();
    let mut final_value = HashMap::new();
    let mut prev = -1;
    for (off, k, v) in recs {
        assert!(*off > prev, "offsets increase");
        prev = *off;
        if *off < active {
            assert!(
                seen_sealed.insert(k.clone(), *off).is_none(),
                "key {k} twice below {active}"
            );
        }
        final_value.insert(k.clone(), v.clone().unwrap());
    }
    assert_eq!(final_value.len(), last.len());
    for (k, v) in last {
        assert_eq!(final_value.get(k), Some(v), "key {k}");
    }
}

#[test]
fn compaction_keeps_the_last_record_per_key_at_its_offset_and_survives_reopen() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        let log = PartitionLog::open(path.clone(), compact_config())
            .await
            .unwrap();
        let last = fill(&log, 5_000, 50).await;
        let before = log.segment_count();
        assert!(before > 5, "several sealed segments ({before})");
        let end = log.log_end_offset();
        let stats = log.compact().await.unwrap();
        assert!(stats.segments_rewritten > 0, "{stats:?}");
        assert!(stats.bytes_after * 4 < stats.bytes_before, "{stats:?}");
        assert_eq!(log.log_end_offset(), end, "offsets never move");
        let recs = read_records(&log, 0).await;
        check_compacted(&recs, active_base(&path), &last);
        // A second pass with nothing new to clean does nothing.
        assert_eq!(log.compact().await.unwrap().segments_rewritten, 0);

        // Appends continue after compaction; a reopen reads the same records.
        let more = fill(&log, 100, 50).await;
        log.close().await.unwrap();
        let log = PartitionLog::open(path.clone(), compact_config())
            .await
            .unwrap();
        // The new segments are dirty: they supersede records in the clean ones.
        assert!(log.compact().await.unwrap().segments_rewritten > 0);
        let again = read_records(&log, 0).await;
        let mut want = last.clone();
        want.extend(more);
        check_compacted(&again, active_base(&path), &want);
        // Reading from the middle of a removed range starts at the next survivor.
        let mid = recs[recs.len() / 2].0 - 1;
        let from_mid = read_records(&log, mid).await;
        assert!(from_mid.first().unwrap().0 >= mid);
        log.close().await.unwrap();
    });
}

#[test]
fn a_reader_during_compaction_never_sees_a_keys_older_value_after_a_newer_one() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path().join("p0"), compact_config())
            .await
            .unwrap();
        let last = fill(&log, 3_000, 20).await;
        // Read in small steps while the compaction runs on the same executor.
        let reader = {
            let log = log.clone();
            glommio::spawn_local(async move {
                let mut newest: HashMap<String, i64> = HashMap::new();
                let mut offset = 0;
                let mut values = HashMap::new();
                while offset < log.log_end_offset() {
                    let r = log.read(offset, 1 << 10).await.unwrap();
                    let joined = Bytes::from(r.chunks.concat());
                    for b in split_batches(&joined).unwrap() {
                        let d = decode_batch(&b).unwrap();
                        for rec in &d.refs {
                            let off = d.offset(rec);
                            if off < offset {
                                continue;
                            }
                            let k = String::from_utf8(d.key(rec).unwrap().to_vec()).unwrap();
                            let v = value_of(&d.records[rec.bytes.clone()]);
                            let seq: i64 = v.rsplit('-').next().unwrap().parse().unwrap();
                            let prev = newest.insert(k.clone(), seq);
                            assert!(prev.is_none_or(|p| p < seq), "{k}: {prev:?} then {seq}");
                            values.insert(k, v);
                        }
                        offset = offset.max(d.header.last_offset() + 1);
                    }
                    glommio::executor().yield_task_queue_now().await;
                }
                values
            })
        };
        let stats = log.compact().await.unwrap();
        assert!(stats.segments_rewritten > 0);
        let values = reader.await;
        assert_eq!(values, last);
        log.close().await.unwrap();
    });
}

#[test]
fn a_crash_mid_compaction_leaves_a_readable_log() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        let log = PartitionLog::open(path.clone(), compact_config())
            .await
            .unwrap();
        let last = fill(&log, 2_000, 30).await;
        let end = log.log_end_offset();
        let original = read_records(&log, 0).await;
        log.close().await.unwrap();
        let first = format!("{:020}", 0);

        // Crash before the rename: a half-written `.cleaned` file and an index already
        // removed. The original log is served, the leftover deleted.
        std::fs::write(path.join(format!("{first}.cleaned")), vec![0x55u8; 5000]).unwrap();
        std::fs::remove_file(path.join(format!("{first}.index"))).unwrap();
        let log = PartitionLog::open(path.clone(), compact_config())
            .await
            .unwrap();
        assert!(!path.join(format!("{first}.cleaned")).exists());
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_records(&log, 0).await, original);

        // Crash after the rename, before the new indexes: the compacted file with no
        // index is rebuilt by the scan.
        log.compact().await.unwrap();
        let compacted = read_records(&log, 0).await;
        log.close().await.unwrap();
        for e in std::fs::read_dir(&path).unwrap() {
            let p = e.unwrap().path();
            if p.extension()
                .is_some_and(|x| x == "index" || x == "timeindex")
            {
                std::fs::remove_file(p).unwrap();
            }
        }
        let log = PartitionLog::open(path.clone(), compact_config())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), end);
        let reopened = read_records(&log, 0).await;
        assert_eq!(reopened, compacted);
        check_compacted(&reopened, active_base(&path), &last);
        log.close().await.unwrap();
    });
}

#[test]
fn delete_policy_topics_are_not_compacted_and_compact_topics_are_not_expired() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = compact_config();
        config.cleanup_compact = false;
        config.cleanup_delete = true;
        let log = PartitionLog::open(dir.path().join("a"), config)
            .await
            .unwrap();
        fill(&log, 1_000, 10).await;
        assert_eq!(log.compact().await.unwrap().segments_rewritten, 0);
        log.close().await.unwrap();

        let mut config = compact_config();
        config.retention_ms = 0;
        config.retention_bytes = 0;
        let log: Rc<PartitionLog> = PartitionLog::open(dir.path().join("b"), config)
            .await
            .unwrap();
        fill(&log, 1_000, 10).await;
        let segs = log.segment_count();
        log.enforce_retention().await.unwrap();
        assert_eq!(log.segment_count(), segs);
        assert_eq!(log.log_start_offset(), 0);
        log.close().await.unwrap();
    });
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// min.compaction.lag.ms: segments with records younger than the lag keep every record
/// (consumers get that window to see each update); older ones are compacted.
#[test]
fn records_younger_than_min_compaction_lag_ms_are_not_compacted() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        let mut config = compact_config();
        config.min_compaction_lag_ms = 3_600_000;
        let log = PartitionLog::open(path.clone(), config.clone())
            .await
            .unwrap();
        // 1000 old records (1970), then 1000 written now, over the same 10 keys.
        fill(&log, 1_000, 10).await;
        let last = fill_at(&log, 1_000, 10, now_ms()).await;
        let stats = log.compact().await.unwrap();
        assert!(
            stats.segments_rewritten > 0,
            "old segments compact: {stats:?}"
        );
        let recs = read_records(&log, 0).await;
        let young = recs.iter().filter(|r| r.0 >= 1_000).count();
        assert_eq!(young, 1_000, "every record younger than the lag is kept");
        assert!(recs.len() < 2_000, "older duplicates went");

        // Without the lag the rest compacts too.
        config.min_compaction_lag_ms = 0;
        log.set_config(config);
        assert!(log.compact().await.unwrap().segments_rewritten > 0);
        check_compacted(&read_records(&log, 0).await, active_base(&path), &last);
        log.close().await.unwrap();
    });
}

/// A key map bounded below the number of keys (Kafka's dedupe buffer): each pass maps
/// what fits, cleans up to there and the next pass goes on; in the end every key is
/// once in the sealed segments, with its last value. The bound comes the way the
/// broker sets it: `log.cleaner.dedupe.buffer.size` shared by the shards, through the
/// topic's log config.
#[test]
fn a_key_map_smaller_than_the_keys_compacts_in_several_passes() {
    run(|| async {
        use runnel::config::BrokerConfig;
        use runnel::segment::compact::OFFSET_MAP_ENTRY_BYTES;
        use runnel::shard::partition::log_config_for;
        const KEYS_IN_MAP: usize = 20;
        const BATCH_RECORDS: usize = 10;
        const SHARDS: usize = 2;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        let broker = BrokerConfig {
            cores: SHARDS,
            log_cleaner_dedupe_buffer_size: (SHARDS * KEYS_IN_MAP * (OFFSET_MAP_ENTRY_BYTES + 4))
                as u64,
            ..BrokerConfig::default()
        };
        broker.validate().unwrap();
        let topic: std::collections::BTreeMap<String, String> = [
            ("cleanup.policy", "compact"),
            ("segment.bytes", "8192"),
            ("index.interval.bytes", "512"),
            ("min.cleanable.dirty.ratio", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = log_config_for(&topic, &broker);
        assert_eq!(
            config.dedupe_buffer_bytes,
            KEYS_IN_MAP * (OFFSET_MAP_ENTRY_BYTES + 4)
        );
        let log = PartitionLog::open(path.clone(), config).await.unwrap();
        let last = fill(&log, 5_000, 200).await;
        let mut passes = 0;
        loop {
            let stats = log.compact().await.unwrap();
            // The bound is checked between batches: one batch may overshoot it.
            assert!(stats.keys <= KEYS_IN_MAP + BATCH_RECORDS, "{stats:?}");
            if stats.keys == 0 {
                break; // nothing dirty left
            }
            passes += 1;
            assert!(passes < 1_000, "compaction does not converge");
        }
        assert!(passes > 1, "the map bound split the work ({passes} passes)");
        check_compacted(&read_records(&log, 0).await, active_base(&path), &last);
        log.close().await.unwrap();
    });
}

/// max.compaction.lag.ms (KIP-354): a dirty segment whose first batch is older than the
/// lag gets compacted although the dirty share is below min.cleanable.dirty.ratio;
/// dirty data younger than the lag waits for the ratio.
#[test]
fn a_segment_older_than_max_compaction_lag_ms_compacts_below_the_dirty_ratio() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        let mut config = compact_config();
        let log = PartitionLog::open(path.clone(), config.clone())
            .await
            .unwrap();
        // Written now: the tail of these that stays dirty is younger than the lag too.
        let mut last = fill_at(&log, 3_000, 300, now_ms()).await;
        assert!(log.compact().await.unwrap().segments_rewritten > 0);

        // From now on the ratio never triggers: with a clean part, the dirty share of
        // the sealed segments is always below 1.
        config.min_cleanable_dirty_ratio = 1.0;
        config.max_compaction_lag_ms = 3_600_000;
        log.set_config(config.clone());
        last.extend(fill_at(&log, 1_000, 300, now_ms()).await);
        let stats = log.compact().await.unwrap();
        assert_eq!(
            (stats.segments_rewritten, stats.keys),
            (0, 0),
            "dirty records younger than the lag wait: {stats:?}"
        );

        // Records from 1970 are older than any lag. Reopened, the segments' first batch
        // timestamps are not in memory and are read back from the files.
        last.extend(fill(&log, 2_000, 300).await);
        log.close().await.unwrap();
        let log = PartitionLog::open(path.clone(), config.clone())
            .await
            .unwrap();
        config.max_compaction_lag_ms = i64::MAX;
        log.set_config(config.clone());
        assert_eq!(
            log.compact().await.unwrap().segments_rewritten,
            0,
            "without a max lag the ratio decides"
        );
        config.max_compaction_lag_ms = 3_600_000;
        log.set_config(config);
        let stats = log.compact().await.unwrap();
        assert!(
            stats.segments_rewritten > 0,
            "a dirty segment older than the lag compacts: {stats:?}"
        );
        check_compacted(&read_records(&log, 0).await, active_base(&path), &last);
        log.close().await.unwrap();
    });
}
