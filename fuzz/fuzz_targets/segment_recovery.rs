//! Segment recovery: the input becomes a partition's first segment file (and, when the
//! first byte says so, part of it its offset index); `PartitionLog::open` must recover
//! without panicking, everything it recovered must be readable, an append must land
//! right after the recovered end, and a reopen must find exactly that.
//!
//! Input: `flags` byte, then bytes. flags bit 0: the first `(flags >> 1) * 8` bytes
//! are the `.index` file, the rest the `.log` file.
#![no_main]

use std::cell::RefCell;

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use libfuzzer_sys::fuzz_target;
use runnel::segment::testing::encode_batch;
use runnel::segment::{Durability, LogConfig, PartitionLog};

thread_local! {
    // One executor for the whole run: making one per input (an io_uring each) would
    // dominate the time.
    static EXECUTOR: RefCell<LocalExecutor> = RefCell::new(
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .expect("glommio executor"),
    );
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (index, log) = if flags & 1 == 1 {
        rest.split_at((usize::from(flags >> 1) * 8).min(rest.len()))
    } else {
        (&[][..], rest)
    };
    // On the disk, not tmpfs: the log opens its files with O_DIRECT.
    let dir = tempfile::Builder::new()
        .prefix("runnel-fuzz-")
        .tempdir_in(std::env::var_os("RUNNEL_FUZZ_DIR").unwrap_or_else(|| "/var/tmp".into()))
        .expect("temp dir");
    let part = dir.path().join("t-0");
    std::fs::create_dir(&part).unwrap();
    std::fs::write(part.join("00000000000000000000.log"), log).unwrap();
    if flags & 1 == 1 {
        std::fs::write(part.join("00000000000000000000.index"), index).unwrap();
    }
    EXECUTOR.with(|ex| {
        ex.borrow().run(async {
            let l = PartitionLog::open(part.clone(), config())
                .await
                .expect("recovery opens any segment contents");
            let (start, end) = (l.log_start_offset(), l.log_end_offset());
            assert!(0 <= start && start <= end);
            let mut next = start;
            while next < end {
                let r = l.read(next, 1 << 20).await.expect("recovered data reads");
                let mut records = bytes::Bytes::from(r.chunks.concat());
                assert!(!records.is_empty(), "no batch at {next} below the end {end}");
                for b in runnel::segment::batch::split_batches(&records.split_off(0)).unwrap() {
                    let h = runnel::segment::batch::validate_batch(&b)
                        .expect("served batches are valid");
                    assert!(h.last_offset() >= next, "batches come in offset order");
                    next = h.last_offset() + 1;
                }
            }
            let info = l
                .append(encode_batch(0, 0, &[b"after recovery".as_slice()]), Durability::Durable)
                .await
                .expect("appends continue after recovery");
            assert_eq!(info.base_offset, end);
            l.close().await.expect("close");
            let l = PartitionLog::open(part.clone(), config()).await.expect("reopen");
            assert_eq!(l.log_end_offset(), end + 1, "reopen finds the append");
            l.close().await.expect("close");
        })
    });
});
