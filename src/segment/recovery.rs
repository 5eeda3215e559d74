//! Recovery of one segment on open: find the logical end by scanning batches from the
//! last offset-index entry (or the segment start), checking each batch's length, magic,
//! CRC32C and offset continuity. The scan stops at the first batch that fails (a torn
//! or corrupt tail, or the zero padding after the last batch); nothing from there on
//! is part of the log. Never panics on file contents: every length read from disk is
//! bounded before it is used. Also the repair of what follows the logical end (cut
//! off, its last block zeroed past the end), which truncation reuses.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use glommio::io::DmaFile;

use super::batch::{claimed_len, validate_batch, BATCH_HEADER_LEN, LOG_OVERHEAD};
use super::error::StorageError;
use super::segment::{align_down, align_up, Segment, BLOCK_BYTES};

/// Bytes read per I/O while scanning.
const SCAN_WINDOW_BYTES: u64 = 1 << 20;
/// A length field above this is corruption, whatever max.message.bytes was: bounds the
/// allocation a bit-flipped length could cause.
pub(crate) const BATCH_BYTES_MAX: u64 = 64 << 20;

/// Bytes read by recovery scans since start, over all logs and shards: recovery time
/// should follow the unflushed tail, not the data size (tests read it from the
/// "partition logs open" log line).
static SCANNED_BYTES: AtomicU64 = AtomicU64::new(0);

pub fn scanned_bytes() -> u64 {
    SCANNED_BYTES.load(Ordering::Relaxed)
}

/// Scans from `pos` (where a batch with base offset `seg.next_offset` must start),
/// feeding every valid batch to `seg.on_batch`. Returns the logical end.
pub(crate) async fn scan(
    seg: &Segment,
    file: &DmaFile,
    file_size: u64,
    mut pos: u64,
    interval: u64,
) -> Result<u64, StorageError> {
    let io_err = |e: glommio::GlommioError<()>| StorageError::io("read", seg.path("log"), e);
    while pos + LOG_OVERHEAD as u64 <= file_size {
        let window = (file_size - pos).min(SCAN_WINDOW_BYTES);
        let buf = file.read_at(pos, window as usize).await.map_err(io_err)?;
        SCANNED_BYTES.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let data: &[u8] = &buf;
        let mut p = 0usize;
        while let Some(len) = claimed_len(&data[p..]) {
            let at = pos + p as u64;
            if len < BATCH_HEADER_LEN as i64
                || len as u64 > BATCH_BYTES_MAX
                || at + len as u64 > file_size
            {
                return Ok(at); // zero padding, a torn tail, or a lying length
            }
            let len = len as usize;
            if data.len() - p < len {
                if p == 0 {
                    // One batch larger than the window: read exactly it.
                    let big = file.read_at(at, len).await.map_err(io_err)?;
                    SCANNED_BYTES.fetch_add(big.len() as u64, Ordering::Relaxed);
                    if big.len() < len || !accept(seg, &big[..len], at, interval) {
                        return Ok(at);
                    }
                    p = len;
                }
                break;
            }
            if !accept(seg, &data[p..p + len], at, interval) {
                return Ok(at);
            }
            p += len;
        }
        if p == 0 {
            return Ok(pos); // short read: the file ended
        }
        pos += p as u64;
    }
    Ok(pos)
}

fn accept(seg: &Segment, batch: &[u8], pos: u64, interval: u64) -> bool {
    let Ok(h) = validate_batch(batch) else {
        return false;
    };
    if h.base_offset != seg.next_offset.get() || h.last_offset() < h.base_offset {
        return false;
    }
    seg.on_batch(
        h.base_offset,
        h.last_offset(),
        pos,
        batch.len() as u64,
        h.max_timestamp,
        interval,
    );
    true
}

/// Recovers `seg` from `file`: from the last index entry when the index loads and its
/// last entry points at the expected batch, else from the start. Returns the logical end.
pub(crate) async fn recover_segment(
    seg: &Segment,
    file: &DmaFile,
    file_size: u64,
    interval: u64,
) -> Result<u64, StorageError> {
    if seg.load_index(file_size) {
        let (pos, _) = seg.resume_at_last_entry();
        let entries = seg.index.borrow().len();
        let end = scan(seg, file, file_size, pos, interval).await?;
        if end > pos {
            seg.index_dirty.set(seg.index.borrow().len() != entries);
            return Ok(end);
        }
        // The last entry does not point at a valid batch: the index is stale.
    }
    seg.reset_index();
    scan(seg, file, file_size, 0, interval).await
}

/// Whether the bytes after the logical end, to the end of its block, are zero.
pub(super) async fn tail_is_clean(
    file: &DmaFile,
    end: u64,
    file_size: u64,
    path: &Path,
) -> Result<bool, StorageError> {
    let block_end = align_up(end).min(file_size);
    if block_end <= end {
        return Ok(true);
    }
    let data = file
        .read_at(end, (block_end - end) as usize)
        .await
        .map_err(|e| StorageError::io("read", path, e))?;
    Ok(data.iter().all(|b| *b == 0))
}

/// Cuts a damaged tail: truncate to the block after `end`, zero that block past `end`,
/// and fdatasync, so neither garbage nor stale batches after the cut can come back.
pub(super) async fn repair_tail(file: &DmaFile, end: u64, path: &Path) -> Result<(), StorageError> {
    let block = align_down(end);
    let keep = (end - block) as usize;
    file.truncate(align_up(end))
        .await
        .map_err(|e| StorageError::io("truncate", path, e))?;
    if keep > 0 {
        let data = file
            .read_at(block, keep)
            .await
            .map_err(|e| StorageError::io("read", path, e))?;
        let mut buf = glommio::allocate_dma_buffer(BLOCK_BYTES as usize);
        buf.as_bytes_mut().fill(0);
        buf.as_bytes_mut()[..keep].copy_from_slice(&data[..keep]);
        file.write_at(buf, block)
            .await
            .map_err(|e| StorageError::io("write", path, e))?;
    }
    file.fdatasync()
        .await
        .map_err(|e| StorageError::io("fdatasync", path, e))
}

/// Reads the partial tail block of `seg` at `pos` into `dst` (whose length is the read's):
/// appends after reopen and after a truncation rewrite that block with new bytes.
pub(super) async fn read_tail_block(
    file: &DmaFile,
    seg: &Segment,
    pos: u64,
    dst: &mut [u8],
) -> Result<(), StorageError> {
    let data = file
        .read_at(pos, dst.len())
        .await
        .map_err(|e| StorageError::io("read", seg.path("log"), e))?;
    if data.len() != dst.len() {
        return Err(StorageError::io(
            "read",
            seg.path("log"),
            std::io::Error::other("short read of tail block"),
        ));
    }
    dst.copy_from_slice(&data);
    Ok(())
}
