//! Storage benchmark: partition-log appends against `fio` on the same directory.
//!
//! `cargo run --release --bin segment-bench -- --dir DIR [--seconds 4]`
//!
//! For batch sizes 1 KiB, 16 KiB, 256 KiB and 1 MiB (batches of exactly that many
//! bytes; `--skew` adds bytes to each, as real batches are not block-sized), two modes:
//! - flush-per-batch: one appender, every append `Durable` (each batch durable before
//!   the next: one O_DSYNC write, or write + fdatasync); fio: `--direct=1
//!   --fdatasync=1`, same block size; and fio `--sync=dsync` (one O_DSYNC write each).
//! - group commit: `--appenders` concurrent tasks, every append `Durable`, so one
//!   flusher round writes and syncs many batches; fio: `--direct=1`, same block size,
//!   no fdatasync (the raw O_DIRECT bandwidth the disk gives one sequential writer);
//!   and fio `--fdatasync=N` (one fdatasync per N writes, like a round).
//!
//! Latencies (hdrhistogram): our append→durable latency; our flush, i.e. one round's
//! write(s) + sync; our fdatasync alone where a round has one. fio's from its JSON
//! output: for flush-per-batch the O_DSYNC write (one block written and synced, the
//! same work as our flush) and the fdatasync alone of the `--fdatasync=1` run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use glommio::LocalExecutorBuilder;
use hdrhistogram::Histogram;
use runnel::segment::testing::encode_batch_of_size;
use runnel::segment::{Durability, LogConfig, PartitionLog};

// The broker's allocator: write buffers are freed and reallocated every flush round.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Partition log append benchmark with fio comparison")]
struct Args {
    /// Directory on the device to measure (a scratch subdirectory is used and removed).
    #[arg(long)]
    dir: PathBuf,
    /// Seconds per run (ours and fio each).
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Runs per case, ours and fio alternating; the best run of each is reported
    /// (the machine is shared: best-of filters out interference from other work).
    #[arg(long, default_value_t = 2)]
    repeat: usize,
    /// Concurrent appenders in group-commit mode.
    #[arg(long, default_value_t = 16)]
    appenders: usize,
    /// Run only the cases whose "mode:KiB" label contains this, e.g. "group-commit:1024".
    #[arg(long)]
    only: Option<String>,
    /// Skip fio (print only our numbers).
    #[arg(long)]
    no_fio: bool,
    /// Bytes added to every batch (0: batches of exactly the block size).
    #[arg(long, default_value_t = 0)]
    skew: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    FlushPerBatch,
    GroupCommit,
}

#[derive(Default, Clone)]
struct Outcome {
    mb_s: f64,
    /// p50, p99, p99.9 in µs: append→durable (ours), write completion (fio).
    lat_us: [f64; 3],
    /// One flush round: write(s) + sync (ours).
    flush_us: [f64; 3],
    /// fdatasync alone.
    sync_us: [f64; 3],
    /// fdatasync calls (ours).
    syncs: u64,
    /// Flush rounds (group commits) and bytes written per round.
    rounds: u64,
    kib_per_round: f64,
}

fn pcts(h: &Histogram<u64>, scale: f64) -> [f64; 3] {
    if h.is_empty() {
        return [0.0; 3];
    }
    [
        h.value_at_quantile(0.50) as f64 / scale,
        h.value_at_quantile(0.99) as f64 / scale,
        h.value_at_quantile(0.999) as f64 / scale,
    ]
}

fn run_ours(dir: &Path, size: usize, mode: Mode, seconds: u64, appenders: usize) -> Outcome {
    assert!(size >= 128, "a batch holds a header and a record");
    let dir = dir.to_path_buf();
    LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .spawn(move || async move {
            let config = LogConfig {
                segment_bytes: 512 << 20,
                max_message_bytes: (2 << 20) as u32,
                ..LogConfig::default()
            };
            let log = PartitionLog::open(dir.clone(), config)
                .await
                .expect("open log");
            let batch = encode_batch_of_size(size, 0);
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let tasks = if mode == Mode::FlushPerBatch {
                1
            } else {
                appenders
            };
            let started = Instant::now();
            let handles: Vec<_> = (0..tasks)
                .map(|_| {
                    let log: Rc<PartitionLog> = log.clone();
                    let batch = batch.clone();
                    glommio::spawn_local(async move {
                        let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                            .expect("bounds");
                        let mut bytes = 0u64;
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            log.append(batch.clone(), Durability::Durable)
                                .await
                                .expect("append");
                            lat.saturating_record(t.elapsed().as_nanos() as u64);
                            bytes += batch.len() as u64;
                        }
                        (lat, bytes)
                    })
                })
                .collect();
            let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
            let mut bytes = 0;
            for h in handles {
                let (l, b) = h.await;
                lat.add(&l).expect("same bounds");
                bytes += b;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let stats = log.take_flush_stats();
            log.close().await.expect("close");
            let _ = std::fs::remove_dir_all(&dir);
            Outcome {
                mb_s: bytes as f64 / elapsed / 1e6,
                lat_us: pcts(&lat, 1e3),
                sync_us: pcts(&stats.fdatasync_ns, 1e3),
                flush_us: pcts(&stats.round_ns, 1e3),
                syncs: stats.fdatasync_ns.len(),
                rounds: stats.round_ns.len(),
                kib_per_round: stats.bytes_written as f64
                    / 1024.0
                    / stats.round_ns.len().max(1) as f64,
            }
        })
        .expect("executor")
        .join()
        .expect("bench thread")
}

#[derive(Clone, Copy)]
enum FioSync {
    None,
    /// `--fdatasync=N`.
    Every(usize),
    /// `--sync=dsync`: the file opened O_DSYNC.
    Dsync,
}

fn run_fio(dir: &Path, size: usize, sync: FioSync, seconds: u64) -> Option<Outcome> {
    std::fs::create_dir_all(dir).ok()?;
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=runnel",
        &format!("--directory={}", dir.display()),
        "--rw=write",
        &format!("--bs={size}"),
        "--direct=1",
        "--ioengine=psync",
        // Fresh space, as a log append gets: a file larger than the run can fill, so
        // fio never loops back to overwrite already-allocated blocks.
        "--size=16g",
        &format!("--runtime={seconds}"),
        "--time_based",
        "--output-format=json",
    ]);
    match sync {
        FioSync::None => {}
        FioSync::Every(n) => {
            cmd.arg(format!("--fdatasync={n}"));
        }
        FioSync::Dsync => {
            cmd.arg("--sync=dsync");
        }
    }
    let out = cmd.output().ok()?;
    let _ = std::fs::remove_dir_all(dir);
    if !out.status.success() {
        eprintln!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    // fio may print warnings before the JSON document.
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text[text.find('{')?..]).ok()?;
    let job = &json["jobs"][0];
    let pct = |v: &serde_json::Value| -> [f64; 3] {
        let p = &v["percentile"];
        let g = |k: &str| p[k].as_f64().unwrap_or(0.0) / 1e3;
        [g("50.000000"), g("99.000000"), g("99.900000")]
    };
    Some(Outcome {
        mb_s: job["write"]["bw_bytes"].as_f64()? / 1e6,
        lat_us: pct(&job["write"]["clat_ns"]),
        sync_us: pct(&job["sync"]["lat_ns"]),
        ..Outcome::default()
    })
}

fn main() {
    let args = Args::parse();
    let root = args.dir.join("segment-bench-scratch");
    let sizes = [1usize << 10, 16 << 10, 256 << 10, 1 << 20];
    let have_fio = !args.no_fio && Command::new("fio").arg("--version").output().is_ok();
    if !args.no_fio && !have_fio {
        eprintln!("fio not found: install it (apt-get install -y fio) or pass --no-fio");
    }
    println!(
        "best of {} runs x {} s per case; group commit = {} concurrent Durable appenders; \
         batches of block size + {} bytes",
        args.repeat, args.seconds, args.appenders, args.skew
    );
    println!(
        "fio: psync, --direct=1, same bs, fresh file. 'fio MB/s': --fdatasync=1 \
         (flush-per-batch) or no fdatasync (group commit: raw O_DIRECT bandwidth). \
         'fio alt': --sync=dsync (flush-per-batch) or --fdatasync={} (group commit: one \
         fdatasync per group, like ours). 'ratio best' = best ours / best fio; 'paired \
         median' = median over the runs of ours / the fio run right after it.",
        args.appenders
    );
    println!(
        "'flush' = making a write durable: ours = one round (write(s) + fdatasync, or one \
         O_DSYNC write); fio = an O_DSYNC write (flush-per-batch). 'fdatasync' = the call \
         alone (fio: the --fdatasync run of the row)."
    );
    let header = |c: [&str; 12]| {
        println!(
            "{:<15} {:>7} | {:>9} {:>9} {:>6} {:>6} | {:>9} {:>6} | {:>20} | {:>18} | {:>18} | {:>8} | {:>16} | {:>13}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], "fdatasync p99 µs", "ours rounds"
        );
    };
    header([
        "mode",
        "batch",
        "ours MB/s",
        "fio MB/s",
        "ratio",
        "paired",
        "fio alt",
        "ratio",
        "ours append->durable",
        "ours flush",
        "fio flush",
        "flush p99",
    ]);
    header([
        "",
        "",
        "",
        "",
        "best",
        "median",
        "MB/s",
        "",
        "µs p50/p99/p99.9",
        "µs p50/p99/p99.9",
        "µs p50/p99/p99.9",
        "ours/fio",
    ]);
    for mode in [Mode::FlushPerBatch, Mode::GroupCommit] {
        for &size in &sizes {
            let label = match mode {
                Mode::FlushPerBatch => "flush-per-batch",
                Mode::GroupCommit => "group-commit",
            };
            if args
                .only
                .as_ref()
                .is_some_and(|o| !format!("{label}:{}", size >> 10).contains(o.as_str()))
            {
                continue;
            }
            // fio runs: the headline comparison and the alternative.
            let (main_sync, alt_sync) = match mode {
                Mode::FlushPerBatch => (FioSync::Every(1), FioSync::Dsync),
                Mode::GroupCommit => (FioSync::None, FioSync::Every(args.appenders)),
            };
            let best = |slot: &mut Option<Outcome>, o: Option<Outcome>| {
                if let Some(o) = o {
                    if slot.as_ref().is_none_or(|b| o.mb_s > b.mb_s) {
                        *slot = Some(o);
                    }
                }
            };
            let mut ours = Outcome::default();
            let mut fio: Option<Outcome> = None;
            let mut fio_alt: Option<Outcome> = None;
            // ours / fio of each repeat (fio run right after ours): the disk of a
            // shared machine swings for seconds at a time, so a pair sees one state.
            let mut paired = Vec::new();
            for _ in 0..args.repeat.max(1) {
                let o = run_ours(
                    &root.join("ours"),
                    size + args.skew,
                    mode,
                    args.seconds,
                    args.appenders,
                );
                let ours_mb_s = o.mb_s;
                if o.mb_s > ours.mb_s {
                    ours = o;
                }
                if have_fio {
                    let f = run_fio(&root.join("fio"), size, main_sync, args.seconds);
                    if let Some(f) = &f {
                        paired.push(ours_mb_s / f.mb_s.max(1e-9));
                    }
                    best(&mut fio, f);
                    best(
                        &mut fio_alt,
                        run_fio(&root.join("fio"), size, alt_sync, args.seconds),
                    );
                }
            }
            paired.sort_by(f64::total_cmp);
            let paired_median = paired
                .get(paired.len() / 2)
                .map_or("-".to_string(), |r| format!("{r:.2}"));
            let ratio = |a: f64, b: Option<f64>| match b {
                Some(b) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            let mbs =
                |o: &Option<Outcome>| o.as_ref().map_or("-".into(), |f| format!("{:.1}", f.mb_s));
            let tri = |v: [f64; 3]| format!("{:.0} / {:.0} / {:.0}", v[0], v[1], v[2]);
            let dash = || "-".to_string();
            // fio's flush: the O_DSYNC write of one block (flush-per-batch only).
            let (fio_flush, flush_ratio) = match (mode, &fio_alt) {
                (Mode::FlushPerBatch, Some(f)) => {
                    (tri(f.lat_us), ratio(ours.flush_us[1], Some(f.lat_us[1])))
                }
                _ => (dash(), dash()),
            };
            // fdatasync alone: ours where rounds had one, fio's from its --fdatasync run.
            let fio_sync = match mode {
                Mode::FlushPerBatch => &fio,
                Mode::GroupCommit => &fio_alt,
            };
            let fio_p99 = fio_sync
                .as_ref()
                .map_or(dash(), |f| format!("{:.0}", f.sync_us[1]));
            let sync_cmp = if ours.syncs > 0 {
                format!("{:.0}/{fio_p99} n={}", ours.sync_us[1], ours.syncs)
            } else {
                format!("-/{fio_p99} n=0")
            };
            println!(
                "{:<15} {:>6}K | {:>9.1} {:>9} {:>6} {:>6} | {:>9} {:>6} | {:>20} | {:>18} | {:>18} | {:>8} | {:>18} | {:>13}",
                label,
                size >> 10,
                ours.mb_s,
                mbs(&fio),
                ratio(ours.mb_s, fio.as_ref().map(|f| f.mb_s)),
                paired_median,
                mbs(&fio_alt),
                ratio(ours.mb_s, fio_alt.as_ref().map(|f| f.mb_s)),
                tri(ours.lat_us),
                tri(ours.flush_us),
                fio_flush,
                flush_ratio,
                sync_cmp,
                format!("{} x {:.0}", ours.rounds, ours.kib_per_round),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
