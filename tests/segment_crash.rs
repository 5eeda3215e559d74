//! Crash recovery of the partition log: cut the last segment at random byte positions
//! and flip random bytes in its tail. Reopening must keep every complete batch before
//! the damage and nothing after, never panic, and continue appending at the next
//! offset. Seeded: a failure prints the seed that reproduces it.

use std::future::Future;
use std::path::{Path, PathBuf};

use glommio::LocalExecutorBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runnel::segment::batch::{claimed_len, patch_batch, validate_batch};
use runnel::segment::testing::encode_batch;
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

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 24 << 10,
        index_interval_bytes: 700,
        ..LogConfig::default()
    }
}

/// A batch as stored (offset patched), in order.
struct Stored {
    base: i64,
    next: i64,
    bytes: Vec<u8>,
}

async fn fill(dir: &Path, rng: &mut StdRng) -> Vec<Stored> {
    let log = PartitionLog::open(dir.to_path_buf(), config())
        .await
        .unwrap();
    let mut out = Vec::new();
    for i in 0..rng.gen_range(5..80) {
        let records = rng.gen_range(1..4);
        let vals: Vec<Vec<u8>> = (0..records)
            .map(|k| vec![(i * 7 + k) as u8; rng.gen_range(1..1500)])
            .collect();
        let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
        let b = encode_batch(0, i as i64, &refs);
        let d = if rng.gen_bool(0.5) {
            Durability::Durable
        } else {
            Durability::Written
        };
        let info = log.append(b.clone(), d).await.unwrap();
        let p = patch_batch(&b, info.base_offset, None);
        out.push(Stored {
            base: info.base_offset,
            next: info.last_offset + 1,
            bytes: [p.header.as_ref(), p.body.as_ref()].concat(),
        });
    }
    log.flush().await.unwrap();
    // No close: the process "dies" with the indexes of the active segment unwritten.
    out
}

fn last_segment(dir: &Path) -> (PathBuf, i64) {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let last = logs.pop().unwrap();
    let base = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    (last, base)
}

/// (start position, end position) of every batch in a healthy segment file.
fn batch_spans(file: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut pos = 0;
    while let Some(len) = claimed_len(&file[pos..]) {
        if len <= 12 {
            break;
        }
        spans.push((pos, pos + len as usize));
        pos += len as usize;
    }
    spans
}

async fn read_everything(log: &PartitionLog) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let r = log.read(offset, 32 << 10).await.unwrap();
        let bytes = r.chunks.concat();
        let mut p = 0;
        while p < bytes.len() {
            let len = claimed_len(&bytes[p..]).unwrap() as usize;
            offset = validate_batch(&bytes[p..p + len]).unwrap().last_offset() + 1;
            p += len;
        }
        out.extend_from_slice(&bytes);
    }
    out
}

/// Reopens after damage and checks the survivors are exactly the batches wholly
/// before `damage_at` in the last segment (plus all earlier segments).
async fn check_recovery(
    dir: &Path,
    stored: &[Stored],
    seg_base: i64,
    spans: &[(usize, usize)],
    damage_at: usize,
    seed: u64,
) {
    let survivors_in_last = spans
        .iter()
        .take_while(|(_, end)| *end <= damage_at)
        .count();
    let first_in_last = stored.iter().position(|s| s.base == seg_base).unwrap();
    let kept = &stored[..first_in_last + survivors_in_last];
    let expected_end = kept.last().map_or(0, |s| s.next);
    let expected: Vec<u8> = kept.iter().flat_map(|s| s.bytes.iter().copied()).collect();

    let log = PartitionLog::open(dir.to_path_buf(), config())
        .await
        .unwrap();
    assert_eq!(
        log.log_end_offset(),
        expected_end,
        "seed {seed}: log end after damage at {damage_at}"
    );
    assert_eq!(
        read_everything(&log).await,
        expected,
        "seed {seed}: surviving bytes"
    );
    let extra = encode_batch(0, 0, &[b"after the crash".as_slice()]);
    let info = log
        .append(extra.clone(), Durability::Durable)
        .await
        .unwrap();
    assert_eq!(
        info.base_offset, expected_end,
        "seed {seed}: appends continue"
    );
    drop(log);

    // And the repaired log survives another crash + reopen.
    let log = PartitionLog::open(dir.to_path_buf(), config())
        .await
        .unwrap();
    assert_eq!(
        log.log_end_offset(),
        expected_end + 1,
        "seed {seed}: second reopen"
    );
    let mut all = expected;
    let p = patch_batch(&extra, expected_end, None);
    all.extend_from_slice(&p.header);
    all.extend_from_slice(&p.body);
    assert_eq!(
        read_everything(&log).await,
        all,
        "seed {seed}: after second reopen"
    );
}

#[test]
fn truncating_the_last_segment_anywhere_keeps_exactly_the_complete_batches() {
    run(|| async {
        for seed in 0..40u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let dir = tempfile::tempdir().unwrap();
            let stored = fill(dir.path(), &mut rng).await;
            let (path, base) = last_segment(dir.path());
            let file = std::fs::read(&path).unwrap();
            let spans = batch_spans(&file);
            let end = spans.last().map_or(0, |s| s.1);
            let cut = rng.gen_range(0..=end);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(cut as u64)
                .unwrap();
            check_recovery(dir.path(), &stored, base, &spans, cut, seed).await;
        }
    });
}

#[test]
fn flipped_bytes_in_the_tail_cut_the_log_at_the_damaged_batch() {
    run(|| async {
        for seed in 100..140u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let dir = tempfile::tempdir().unwrap();
            let stored = fill(dir.path(), &mut rng).await;
            let (path, base) = last_segment(dir.path());
            let mut file = std::fs::read(&path).unwrap();
            let spans = batch_spans(&file);
            let Some(&(_, end)) = spans.last() else {
                continue;
            };
            // Somewhere in the last ~8 KiB; the partition leader epoch (bytes 12..16 of
            // a batch) is covered by no checksum, in Kafka's format too: skip it.
            let at = loop {
                let at = rng.gen_range(end.saturating_sub(8 << 10)..end);
                let (start, _) = spans
                    .iter()
                    .copied()
                    .find(|(s, e)| *s <= at && at < *e)
                    .unwrap();
                if !(12..16).contains(&(at - start)) {
                    break at;
                }
            };
            file[at] ^= 1 << rng.gen_range(0..8);
            std::fs::write(&path, &file).unwrap();
            let damaged_batch_start = spans.iter().find(|(s, e)| *s <= at && at < *e).unwrap().0;
            check_recovery(dir.path(), &stored, base, &spans, damaged_batch_start, seed).await;
        }
    });
}

#[test]
fn garbage_files_never_panic() {
    run(|| async {
        for seed in 200..230u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let dir = tempfile::tempdir().unwrap();
            let len = rng.gen_range(0..20_000);
            let mut junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if seed % 3 == 0 && len > 20 {
                // A plausible header with a huge length.
                junk[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
            }
            std::fs::write(dir.path().join(format!("{:020}.log", 0)), &junk).unwrap();
            std::fs::write(
                dir.path().join(format!("{:020}.index", 0)),
                &junk[..len.min(64)],
            )
            .unwrap();
            std::fs::write(dir.path().join(format!("{:020}.log", 5)), &junk[len / 2..]).unwrap();
            let log = PartitionLog::open(dir.path().to_path_buf(), config())
                .await
                .unwrap();
            assert_eq!(log.log_end_offset(), 0, "seed {seed}");
            let info = log
                .append(encode_batch(0, 0, &[b"ok".as_slice()]), Durability::Durable)
                .await
                .unwrap();
            assert_eq!(info.base_offset, 0);
        }
    });
}

#[test]
fn missing_or_damaged_indexes_are_rebuilt() {
    run(|| async {
        for (seed, damage) in [
            (300u64, "delete"),
            (301, "truncate"),
            (302, "garbage"),
            (303, "flip"),
        ] {
            let mut rng = StdRng::seed_from_u64(seed);
            let dir = tempfile::tempdir().unwrap();
            let stored = fill(dir.path(), &mut rng).await;
            // Close properly once so every segment has index files, then damage them.
            let log = PartitionLog::open(dir.path().to_path_buf(), config())
                .await
                .unwrap();
            log.close().await.unwrap();
            drop(log);
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let path = entry.unwrap().path();
                let ext = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("")
                    .to_string();
                if ext != "index" && ext != "timeindex" {
                    continue;
                }
                let mut raw = std::fs::read(&path).unwrap();
                match damage {
                    "delete" => std::fs::remove_file(&path).unwrap(),
                    "truncate" => std::fs::write(&path, &raw[..raw.len() / 2]).unwrap(),
                    "garbage" => std::fs::write(&path, vec![0x41u8; raw.len()]).unwrap(),
                    _ => {
                        if !raw.is_empty() {
                            let i = rng.gen_range(0..raw.len());
                            raw[i] ^= 0x10;
                        }
                        std::fs::write(&path, &raw).unwrap();
                    }
                }
            }
            let log = PartitionLog::open(dir.path().to_path_buf(), config())
                .await
                .unwrap();
            let expected: Vec<u8> = stored
                .iter()
                .flat_map(|s| s.bytes.iter().copied())
                .collect();
            assert_eq!(
                log.log_end_offset(),
                stored.last().unwrap().next,
                "{damage}"
            );
            assert_eq!(read_everything(&log).await, expected, "{damage}");
            // Reads landing mid-segment go through the rebuilt index.
            for s in stored.iter().step_by(3) {
                let r = log.read(s.next - 1, 1).await.unwrap();
                assert_eq!(
                    r.chunks.concat(),
                    s.bytes,
                    "{damage}: read at {}",
                    s.next - 1
                );
            }
        }
    });
}

#[test]
fn the_active_segments_index_is_persisted_and_recovery_resumes_from_it() {
    run(|| async {
        for (seed, cut_fraction) in [(400u64, 1.0f64), (401, 0.99), (402, 0.3)] {
            let mut rng = StdRng::seed_from_u64(seed);
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig {
                index_interval_bytes: 0,
                ..LogConfig::default()
            };
            let log = PartitionLog::open(dir.path().to_path_buf(), config.clone())
                .await
                .unwrap();
            let mut stored = Vec::new();
            for i in 0..1500usize {
                let b = encode_batch(
                    0,
                    i as i64,
                    &[vec![i as u8; rng.gen_range(1..200)].as_slice()],
                );
                let info = log.append(b.clone(), Durability::Written).await.unwrap();
                let p = patch_batch(&b, info.base_offset, None);
                stored.push([p.header.as_ref(), p.body.as_ref()].concat());
            }
            log.flush().await.unwrap();
            drop(log); // crash: no close
            let index = std::fs::read(dir.path().join(format!("{:020}.index", 0))).unwrap();
            assert!(
                index.len() > 8 * 1000,
                "seed {seed}: active index persisted ({} bytes)",
                index.len()
            );

            let path = dir.path().join(format!("{:020}.log", 0));
            let file = std::fs::read(&path).unwrap();
            let spans = batch_spans(&file);
            let cut = (spans.last().unwrap().1 as f64 * cut_fraction) as usize;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(cut as u64)
                .unwrap();
            let kept = spans.iter().take_while(|(_, e)| *e <= cut).count();

            let log = PartitionLog::open(dir.path().to_path_buf(), config)
                .await
                .unwrap();
            assert_eq!(log.log_end_offset(), kept as i64, "seed {seed}");
            let expected: Vec<u8> = stored[..kept].concat();
            assert_eq!(read_everything(&log).await, expected, "seed {seed}");
            for o in (0..kept as i64).step_by(97) {
                assert_eq!(
                    log.read(o, 1).await.unwrap().chunks.concat(),
                    stored[o as usize],
                    "seed {seed} offset {o}"
                );
            }
        }
    });
}
