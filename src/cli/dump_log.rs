//! `runnel dump-log DIR`: lists the record batches of one partition directory, offline
//! (Kafka's kafka-dump-log). Operators use it to look at a partition after a crash;
//! tests use it to compare the replicas of a partition batch by batch.
//!
//! Reads the `.log` segment files in base-offset order and walks batches until the
//! first one that is not a whole, CRC-valid v2 batch (the segment's logical end: the
//! rest is preallocated zeros or a torn tail that recovery would cut). Run it on a
//! stopped broker's data, or accept that a live broker's newest bytes may be missing.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use super::{print_json, CliError, CliResult};
use crate::segment::batch::{claimed_len, validate_batch, BATCH_HEADER_LEN};

#[derive(Args)]
pub struct DumpLogArgs {
    /// A partition directory, e.g. data/topics/orders-0.
    pub dir: PathBuf,
    /// One JSON document instead of a line per batch.
    #[arg(long)]
    pub json: bool,
}

/// One batch as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub leader_epoch: i32,
    pub crc: u32,
    pub records: i32,
    pub bytes: usize,
    pub producer_id: i64,
    pub base_sequence: i32,
}

/// Every valid batch of the partition in `dir`, and per segment why its walk stopped
/// early (a batch that is neither whole nor zero padding), if it did.
pub fn dump(dir: &Path) -> std::io::Result<(Vec<DumpedBatch>, Vec<String>)> {
    let mut segments: Vec<(i64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
        else {
            continue;
        };
        if let Ok(base) = stem.parse::<i64>() {
            segments.push((base, path));
        }
    }
    segments.sort();
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (_, path) in segments {
        let mut data = Vec::new();
        File::open(&path)?.read_to_end(&mut data)?;
        let mut p = 0usize;
        while let Some(len) = claimed_len(&data[p..]) {
            if len == 12 && data[p..p + 12].iter().all(|b| *b == 0) {
                break; // preallocated, never written
            }
            if len < BATCH_HEADER_LEN as i64 || p as i64 + len > data.len() as i64 {
                notes.push(format!(
                    "{}: stops at byte {p}: batch length {len} does not fit",
                    path.display()
                ));
                break;
            }
            let batch = &data[p..p + len as usize];
            match validate_batch(batch) {
                Ok(h) => out.push(DumpedBatch {
                    base_offset: h.base_offset,
                    last_offset: h.last_offset(),
                    leader_epoch: h.partition_leader_epoch,
                    crc: h.crc,
                    records: h.records_count,
                    bytes: batch.len(),
                    producer_id: h.producer_id,
                    base_sequence: h.base_sequence,
                }),
                Err(e) => {
                    notes.push(format!("{}: stops at byte {p}: {e}", path.display()));
                    break;
                }
            }
            p += len as usize;
        }
    }
    Ok((out, notes))
}

pub fn run(a: DumpLogArgs) -> CliResult {
    let (batches, notes) = dump(&a.dir)
        .map_err(|e| CliError::not_found(format!("cannot read {}: {e}", a.dir.display())))?;
    if a.json {
        let list: Vec<_> = batches
            .iter()
            .map(|b| {
                json!({
                    "base_offset": b.base_offset, "last_offset": b.last_offset,
                    "leader_epoch": b.leader_epoch, "crc": b.crc, "records": b.records,
                    "bytes": b.bytes, "producer_id": b.producer_id,
                    "base_sequence": b.base_sequence,
                })
            })
            .collect();
        print_json(&json!({"dir": a.dir, "batches": list, "notes": notes}));
    } else {
        for b in &batches {
            println!(
                "baseOffset: {} lastOffset: {} count: {} leaderEpoch: {} size: {} crc: {:#010x} producerId: {} baseSequence: {}",
                b.base_offset,
                b.last_offset,
                b.records,
                b.leader_epoch,
                b.bytes,
                b.crc,
                b.producer_id,
                b.base_sequence
            );
        }
        for n in &notes {
            eprintln!("{n}");
        }
        eprintln!("{} batches", batches.len());
    }
    Ok(())
}
