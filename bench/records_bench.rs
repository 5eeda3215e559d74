//! CPU cost of the produce path's batch checks, per batch and per GiB of batch bytes:
//! `ValidBatch::new` (length, magic, CRC32C: all produce checked before record-level
//! validation existed) and `records::validate_produced` (every record, walked in
//! place, or through a window as it decompresses) for batches of 1 KiB records in
//! every codec.
//!
//! `cargo run --release --bin records-bench -- [--records 16] [--seconds 2]`
//!
//! Thread CPU time (CLOCK_THREAD_CPUTIME_ID), so other work on a shared machine does
//! not count; best of three runs per case.

use std::time::Duration;

use clap::Parser;
use runnel::segment::compact::Codec;
use runnel::segment::records::{validate_produced, ProduceRules};
use runnel::segment::testing::encode_keyed_batch;
use runnel::segment::ValidBatch;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A record's key and value (`None`: null).
type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

#[derive(Parser, Debug)]
#[command(about = "Produce-path batch validation cost")]
struct Args {
    /// Records of 1 KiB per batch.
    #[arg(long, default_value_t = 16)]
    records: usize,
    /// CPU seconds per case and run.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Also write small valid batches of every codec here, as seeds for the
    /// `record_validation` fuzz target (a flags byte, then the batch), and exit.
    #[arg(long)]
    write_seeds: Option<std::path::PathBuf>,
}

/// Two keyed records and a tombstone per codec; flags byte 1 = a compacted topic.
fn write_seeds(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for codec in Codec::ALL {
        let recs: Vec<KeyValue> = vec![
            (Some(b"k1".to_vec()), Some(value(1)[..64].to_vec())),
            (Some(b"k2".to_vec()), Some(value(2)[..64].to_vec())),
            (Some(b"k1".to_vec()), None),
        ];
        let batch = encode_keyed_batch(0, 1_700_000_000_000, &recs, codec);
        for flags in [0u8, 1] {
            let mut seed = vec![flags];
            seed.extend_from_slice(&batch);
            std::fs::write(dir.join(format!("{codec:?}-{flags}").to_lowercase()), seed)?;
        }
    }
    Ok(())
}

fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes the timespec we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// ns per call of `f`, best of three runs of `seconds` CPU each.
fn measure(seconds: f64, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = thread_cpu();
        let mut n = 0u64;
        while (thread_cpu() - start).as_secs_f64() < seconds {
            for _ in 0..64 {
                f();
            }
            n += 64;
        }
        best = best.min((thread_cpu() - start).as_nanos() as f64 / n as f64);
    }
    best
}

/// Text-like values (compressible about as much as JSON logs), 1 KiB each.
fn value(i: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(1024);
    let mut x = i as u64 | 1;
    while v.len() < 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(
            format!(
                "{{\"id\":{},\"user\":\"u{}\",\"ok\":true}} ",
                x % 100_000,
                x % 977
            )
            .as_bytes(),
        );
    }
    v.truncate(1024);
    v
}

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.write_seeds {
        write_seeds(dir).expect("write the seeds");
        return;
    }
    println!(
        "{:<7} {:>9} {:>14} {:>14} {:>14} {:>14}",
        "codec", "batch B", "crc ns/batch", "rec ns/batch", "crc s/GiB", "rec s/GiB"
    );
    for codec in Codec::ALL {
        let recs: Vec<KeyValue> = (0..args.records)
            .map(|i| (Some(format!("key-{i}").into_bytes()), Some(value(i))))
            .collect();
        let batch = encode_keyed_batch(0, 1_700_000_000_000, &recs, codec);
        let valid = ValidBatch::new(batch.clone()).expect("a valid batch");
        let rules = ProduceRules { compacted: true };
        validate_produced(valid.header(), valid.bytes(), rules).expect("valid records");
        let crc_ns = measure(args.seconds, || {
            std::hint::black_box(ValidBatch::new(std::hint::black_box(batch.clone())).is_ok());
        });
        let rec_ns = measure(args.seconds, || {
            std::hint::black_box(
                validate_produced(valid.header(), std::hint::black_box(valid.bytes()), rules)
                    .is_ok(),
            );
        });
        // CPU seconds per GiB of batches as produced (wire bytes).
        let per_gib = |ns: f64| ns * (1u64 << 30) as f64 / batch.len() as f64 / 1e9;
        println!(
            "{:<7} {:>9} {:>14.0} {:>14.0} {:>14.3} {:>14.3}",
            format!("{codec:?}"),
            batch.len(),
            crc_ns,
            rec_ns,
            per_gib(crc_ns),
            per_gib(rec_ns)
        );
    }
}
