//! How this machine makes one sequential O_DIRECT write durable, by kernel path, with
//! no broker code in the way: the numbers `segment-bench` is judged against, and why
//! the partition log writes a lone flush O_DSYNC.
//!
//! `cargo run --release --bin io-probe -- --dir DIR [--bs 262144] [--rounds 5]`
//!
//! Paths (each `--writes` writes of `--bs` bytes into a fresh, fallocated file, one at
//! a time, each durable before the next; the paths run interleaved, `--rounds` times,
//! and the median MB/s per path is printed; the disk of a shared machine swings):
//! - `psync`: pwrite + fdatasync (fio `--ioengine=psync --fdatasync=1`)
//! - `psync-dsync`: pwritev2(RWF_DSYNC) (fio `--sync=dsync`)
//! - `uring`: io_uring write, then io_uring fdatasync (io_uring always hands fsync to
//!   a worker thread)
//! - `uring-dsync`: one io_uring write with RWF_DSYNC (the log's lone flush)
//! - `uring-dsync-tail`: as `uring-dsync`, each write starting one block back (the
//!   partial tail block a real, unaligned batch stream rewrites: mixed extents)

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use io_uring::{opcode, types, IoUring};

const BLOCK: usize = 4096;
const PATHS: [&str; 5] = [
    "psync",
    "psync-dsync",
    "uring",
    "uring-dsync",
    "uring-dsync-tail",
];

#[derive(Parser, Debug)]
#[command(about = "Durable sequential O_DIRECT writes by kernel path")]
struct Args {
    /// Directory on the device to measure (a scratch file is created and removed).
    #[arg(long)]
    dir: PathBuf,
    /// Bytes per write (a multiple of 4096).
    #[arg(long, default_value_t = 256 << 10)]
    bs: usize,
    /// Writes per run.
    #[arg(long, default_value_t = 1000)]
    writes: usize,
    /// Interleaved rounds over all paths.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len, BLOCK).expect("layout");
        // SAFETY: non-zero size (checked by the caller), freed in Drop with the layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        AlignedBuf { ptr, layout }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn check(r: isize, what: &str) -> std::io::Result<()> {
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn ring_op(ring: &mut IoUring, e: io_uring::squeue::Entry) -> std::io::Result<i32> {
    // SAFETY: the entry's buffer outlives the call: we wait for its completion here.
    unsafe { ring.submission().push(&e).map_err(std::io::Error::other)? };
    ring.submit_and_wait(1)?;
    let c = ring
        .completion()
        .next()
        .expect("one completion after waiting");
    if c.result() < 0 {
        return Err(std::io::Error::from_raw_os_error(-c.result()));
    }
    Ok(c.result())
}

/// MB/s and p50 / p99 µs per durable write.
fn run(args: &Args, path: &str) -> std::io::Result<(f64, u64, u64)> {
    let file_path = args.dir.join("io-probe.dat");
    let _ = std::fs::remove_file(&file_path);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&file_path)?;
    let fd = f.as_raw_fd();
    let total = (args.bs * (args.writes + 1)) as i64;
    // SAFETY: plain fallocate(2) on an fd we own.
    check(
        unsafe { libc::fallocate(fd, 0, 0, total) } as isize,
        "fallocate",
    )?;
    let buf = AlignedBuf::new(args.bs);
    // SAFETY: `buf` holds `bs` bytes.
    unsafe { std::ptr::write_bytes(buf.ptr, 0x5a, args.bs) };
    let mut ring = IoUring::new(8)?;
    let mut lat = Vec::with_capacity(args.writes);
    let started = Instant::now();
    for i in 0..args.writes {
        let t = Instant::now();
        let off = if path == "uring-dsync-tail" {
            (i * (args.bs - BLOCK)) as u64
        } else {
            (i * args.bs) as u64
        };
        let write = |flags: i32| {
            opcode::Write::new(types::Fd(fd), buf.ptr, args.bs as u32)
                .offset(off)
                .rw_flags(flags)
                .build()
        };
        match path {
            "psync" => {
                // SAFETY: `buf` holds `bs` bytes; plain syscalls on an fd we own.
                check(
                    unsafe { libc::pwrite(fd, buf.ptr as *const _, args.bs, off as i64) },
                    "pwrite",
                )?;
                check(unsafe { libc::fdatasync(fd) } as isize, "fdatasync")?;
            }
            "psync-dsync" => {
                let iov = libc::iovec {
                    iov_base: buf.ptr as *mut _,
                    iov_len: args.bs,
                };
                // SAFETY: one iovec over `buf`.
                check(
                    unsafe { libc::pwritev2(fd, &iov, 1, off as i64, libc::RWF_DSYNC) },
                    "pwritev2",
                )?;
            }
            "uring" => {
                ring_op(&mut ring, write(0))?;
                let sync = opcode::Fsync::new(types::Fd(fd))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build();
                ring_op(&mut ring, sync)?;
            }
            "uring-dsync" | "uring-dsync-tail" => {
                ring_op(&mut ring, write(libc::RWF_DSYNC))?;
            }
            other => panic!("unknown path {other}"),
        }
        lat.push(t.elapsed().as_micros() as u64);
    }
    let secs = started.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&file_path);
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    Ok((
        (args.bs * args.writes) as f64 / secs / 1e6,
        q(0.50),
        q(0.99),
    ))
}

fn main() {
    let args = Args::parse();
    if args.bs == 0 || args.bs % BLOCK != 0 || args.bs <= BLOCK {
        eprintln!("--bs must be a multiple of {BLOCK} above {BLOCK}");
        std::process::exit(2);
    }
    let mut results: Vec<Vec<(f64, u64, u64)>> = vec![Vec::new(); PATHS.len()];
    for _ in 0..args.rounds.max(1) {
        for (i, path) in PATHS.iter().enumerate() {
            match run(&args, path) {
                Ok(r) => results[i].push(r),
                Err(e) => {
                    eprintln!("{path}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    println!(
        "{} writes of {} KiB each, durable one at a time; median of {} interleaved rounds",
        args.writes,
        args.bs >> 10,
        args.rounds.max(1)
    );
    println!(
        "{:<17} {:>9} {:>9} {:>9}   all runs MB/s",
        "path", "MB/s", "p50 µs", "p99 µs"
    );
    for (i, path) in PATHS.iter().enumerate() {
        let mut r = results[i].clone();
        r.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mid = r[r.len() / 2];
        let all: Vec<String> = r.iter().map(|x| format!("{:.0}", x.0)).collect();
        println!(
            "{:<17} {:>9.1} {:>9} {:>9}   {}",
            path,
            mid.0,
            mid.1,
            mid.2,
            all.join(" ")
        );
    }
}
