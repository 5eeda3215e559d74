//! One segment of a partition log: a `.log` file of batches plus its sparse offset
//! index and time index, which live in memory and are written to `.index` /
//! `.timeindex` when the segment is sealed (and on close). Indexes are hints: recovery
//! validates them and rebuilds them by scanning when they are missing or damaged.
//!
//! Lifecycle: created by a roll (file not yet on disk: the flusher creates it before
//! the first write, so a roll never waits for I/O), appended to while active, sealed by
//! the next roll, deleted by retention. Lives on the shard that owns the log.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::DmaFile;

use super::error::StorageError;

/// O_DIRECT alignment used for every position and buffer. 4 KiB is a multiple of every
/// logical block size we meet (512 or 4096), checked against the file on open.
pub(crate) const BLOCK_BYTES: u64 = 4096;

pub(crate) fn align_down(v: u64) -> u64 {
    v & !(BLOCK_BYTES - 1)
}
pub(crate) fn align_up(v: u64) -> u64 {
    (v + BLOCK_BYTES - 1) & !(BLOCK_BYTES - 1)
}

const INDEX_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 12;

pub(crate) fn file_name(base_offset: i64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// Sparse offset index entry: the batch starting at `pos` has base offset `base + rel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub rel_offset: u32,
    pub pos: u32,
}

/// Time index entry: every batch with base offset below `base + rel` has a max
/// timestamp <= `max_ts_before`; so a search for ts > `max_ts_before` may start there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub max_ts_before: i64,
    pub rel_offset: u32,
}

/// O_DSYNC handles open on this shard at most: each is a second descriptor of an
/// active segment, and thousands of partitions must not run the process out of
/// descriptors. Partitions beyond it flush with write + fdatasync.
const DSYNC_HANDLES_MAX: usize = 256;

thread_local! {
    static DSYNC_HANDLES: Cell<usize> = const { Cell::new(0) };
}

/// A segment's O_DSYNC handle, counted against `DSYNC_HANDLES_MAX` while it lives.
pub(crate) struct DsyncHandle {
    file: Option<Rc<DmaFile>>,
}

impl DsyncHandle {
    /// A slot for one more handle on this shard, or `None` if all are taken.
    pub fn reserve() -> Option<DsyncHandle> {
        DSYNC_HANDLES.with(|n| {
            if n.get() >= DSYNC_HANDLES_MAX {
                return None;
            }
            n.set(n.get() + 1);
            Some(DsyncHandle { file: None })
        })
    }

    pub fn set(&mut self, file: Rc<DmaFile>) {
        self.file = Some(file);
    }

    pub fn file(&self) -> Option<Rc<DmaFile>> {
        self.file.clone()
    }
}

impl Drop for DsyncHandle {
    fn drop(&mut self) {
        DSYNC_HANDLES.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

pub(crate) struct Segment {
    pub base_offset: i64,
    pub dir: PathBuf,
    /// Next offset after the last batch.
    pub next_offset: Cell<i64>,
    /// Logical bytes: the end of the last complete batch.
    pub size: Cell<u64>,
    /// Logical bytes whose O_DIRECT write completed (readable from the file).
    pub written: Cell<u64>,
    /// Bytes preallocated (or already present) in the file.
    pub allocated: Cell<u64>,
    pub file: RefCell<Option<Rc<DmaFile>>>,
    /// The same file opened O_DSYNC, for flush rounds whose one write is all that is
    /// not yet durable: the write is durable when it completes, no fdatasync follows.
    pub dsync_file: RefCell<Option<DsyncHandle>>,
    pub index: RefCell<Vec<IndexEntry>>,
    pub time_index: RefCell<Vec<TimeEntry>>,
    bytes_since_index: Cell<u64>,
    /// Largest batch max timestamp, -1 when empty.
    pub max_timestamp: Cell<i64>,
    /// Max timestamp of the first batch (Kafka's rolling-based timestamp), for
    /// `max.compaction.lag.ms`; -1 when empty or not known yet (a segment recovered
    /// from its index: `PartitionLog` reads it from the file when needed).
    pub first_batch_timestamp: Cell<i64>,
    /// Wall clock (ms) the segment started aging for `segment.ms`.
    pub created_ms: Cell<i64>,
    /// In-memory indexes differ from the files.
    pub index_dirty: Cell<bool>,
    /// No longer the active segment.
    pub sealed: Cell<bool>,
    /// Offset-index entries in the index file.
    pub persisted_entries: Cell<usize>,
    /// The file was cut to its block-padded size (preallocation released).
    pub trimmed: Cell<bool>,
}

impl Segment {
    pub fn new(dir: &Path, base_offset: i64, created_ms: i64) -> Segment {
        Segment {
            base_offset,
            dir: dir.to_path_buf(),
            next_offset: Cell::new(base_offset),
            size: Cell::new(0),
            written: Cell::new(0),
            allocated: Cell::new(0),
            file: RefCell::new(None),
            dsync_file: RefCell::new(None),
            index: RefCell::new(Vec::new()),
            time_index: RefCell::new(Vec::new()),
            bytes_since_index: Cell::new(0),
            max_timestamp: Cell::new(-1),
            first_batch_timestamp: Cell::new(-1),
            created_ms: Cell::new(created_ms),
            index_dirty: Cell::new(true),
            sealed: Cell::new(false),
            persisted_entries: Cell::new(0),
            trimmed: Cell::new(false),
        }
    }

    /// Closes the O_DSYNC handle, if any (the segment takes no more writes, or its
    /// file is going away).
    pub async fn close_dsync(&self) {
        let h = self.dsync_file.borrow_mut().take();
        if let Some(f) = h.and_then(|mut h| h.file.take()) {
            if let Ok(f) = Rc::try_unwrap(f) {
                let _ = f.close().await;
            }
        }
    }

    pub fn path(&self, ext: &str) -> PathBuf {
        self.dir.join(file_name(self.base_offset, ext))
    }

    pub fn is_fully_written(&self) -> bool {
        self.written.get() == self.size.get()
    }

    /// Records a batch appended (or found by recovery) at `pos`. Adds index entries
    /// every `index_interval_bytes`.
    pub fn on_batch(
        &self,
        base_offset: i64,
        last_offset: i64,
        pos: u64,
        len: u64,
        max_ts: i64,
        interval: u64,
    ) {
        assert_eq!(pos, self.size.get(), "batches are contiguous");
        assert_eq!(base_offset, self.next_offset.get(), "offsets are dense");
        assert!(last_offset >= base_offset);
        if pos > 0 && self.bytes_since_index.get() >= interval {
            let rel = (base_offset - self.base_offset) as u32;
            self.index.borrow_mut().push(IndexEntry {
                rel_offset: rel,
                pos: pos as u32,
            });
            let before = self.max_timestamp.get();
            let mut ti = self.time_index.borrow_mut();
            if ti.last().map_or(before >= 0, |e| before > e.max_ts_before) {
                ti.push(TimeEntry {
                    max_ts_before: before,
                    rel_offset: rel,
                });
            }
            self.bytes_since_index.set(0);
            self.index_dirty.set(true);
        }
        self.bytes_since_index
            .set(self.bytes_since_index.get() + len);
        self.max_timestamp.set(self.max_timestamp.get().max(max_ts));
        if pos == 0 {
            self.first_batch_timestamp.set(max_ts);
        }
        self.next_offset.set(last_offset + 1);
        self.size.set(pos + len);
    }

    /// Position of the indexed batch at or before `offset` (0 if none).
    pub fn lookup(&self, offset: i64) -> (u64, i64) {
        let rel = offset - self.base_offset;
        let index = self.index.borrow();
        let i = index.partition_point(|e| i64::from(e.rel_offset) <= rel);
        if i == 0 {
            (0, self.base_offset)
        } else {
            let e = index[i - 1];
            (u64::from(e.pos), self.base_offset + i64::from(e.rel_offset))
        }
    }

    /// An offset from which a scan for the first batch with max timestamp >= `ts` may start.
    pub fn time_lookup(&self, ts: i64) -> i64 {
        let ti = self.time_index.borrow();
        let i = ti.partition_point(|e| e.max_ts_before < ts);
        if i == 0 {
            self.base_offset
        } else {
            self.base_offset + i64::from(ti[i - 1].rel_offset)
        }
    }

    /// Drops all index state (before a full rebuild scan).
    pub fn reset_index(&self) {
        self.index.borrow_mut().clear();
        self.time_index.borrow_mut().clear();
        self.bytes_since_index.set(0);
        self.max_timestamp.set(-1);
        self.first_batch_timestamp.set(-1);
        self.next_offset.set(self.base_offset);
        self.size.set(0);
        self.index_dirty.set(true);
    }

    /// Resumes from a loaded index: the state just before the batch of the last entry.
    pub fn resume_at_last_entry(&self) -> (u64, i64) {
        let last = self.index.borrow().last().copied();
        let ts = self
            .time_index
            .borrow()
            .last()
            .map_or(-1, |e| e.max_ts_before);
        match last {
            Some(e) => {
                let off = self.base_offset + i64::from(e.rel_offset);
                self.next_offset.set(off);
                self.size.set(u64::from(e.pos));
                self.max_timestamp.set(ts);
                self.bytes_since_index.set(0);
                (u64::from(e.pos), off)
            }
            None => {
                self.reset_index();
                (0, self.base_offset)
            }
        }
    }

    /// A fresh copy of this segment cut before byte `pos` (a batch boundary), for a
    /// truncation: the index entries of batches starting below `pos`, positioned (like
    /// recovery from a loaded index) just before the last kept entry's batch. Returns
    /// the copy and the position the caller scans from, up to `pos`, to finish it.
    pub fn prefix_before(&self, pos: u64) -> (Segment, u64) {
        let copy = Segment::new(&self.dir, self.base_offset, self.created_ms.get());
        let index: Vec<IndexEntry> = self
            .index
            .borrow()
            .iter()
            .take_while(|e| u64::from(e.pos) < pos)
            .copied()
            .collect();
        let last_rel = index.last().map(|e| e.rel_offset);
        let time: Vec<TimeEntry> = self
            .time_index
            .borrow()
            .iter()
            .take_while(|e| last_rel.is_some_and(|last| e.rel_offset <= last))
            .copied()
            .collect();
        *copy.index.borrow_mut() = index;
        *copy.time_index.borrow_mut() = time;
        let (start, _) = copy.resume_at_last_entry();
        (copy, start)
    }

    /// Writes both index files (tmp + rename). Blocking std I/O on the shard: a sealed
    /// segment's index is at most ~segment.bytes/index.interval.bytes * 8 bytes (2 MiB
    /// at the defaults) and this happens once per roll. Not fsync'd: recovery
    /// validates indexes and rebuilds a damaged one.
    pub fn persist_index(&self) -> Result<(), StorageError> {
        self.persist_index_upto(u64::MAX)?;
        self.index_dirty.set(false);
        Ok(())
    }

    /// Writes the index entries whose batch starts before `durable_pos` (all but the
    /// last of them, whose batch may end past it), for the active segment: recovery
    /// then scans from there instead of from the segment start.
    pub fn persist_index_upto(&self, durable_pos: u64) -> Result<(), StorageError> {
        let index = self.index.borrow();
        let mut n = index.partition_point(|e| u64::from(e.pos) < durable_pos);
        if durable_pos != u64::MAX {
            n = n.saturating_sub(1);
        }
        let mut buf = Vec::with_capacity(n * INDEX_ENTRY_BYTES + 4);
        for e in &index[..n] {
            buf.extend_from_slice(&e.rel_offset.to_be_bytes());
            buf.extend_from_slice(&e.pos.to_be_bytes());
        }
        let last_rel = index[..n].last().map_or(0, |e| e.rel_offset);
        seal_crc(&mut buf);
        write_replace(&self.path("index"), &buf)?;
        let mut buf = Vec::with_capacity(self.time_index.borrow().len() * TIME_ENTRY_BYTES + 4);
        for e in self
            .time_index
            .borrow()
            .iter()
            .take_while(|e| n > 0 && e.rel_offset <= last_rel)
        {
            buf.extend_from_slice(&e.max_ts_before.to_be_bytes());
            buf.extend_from_slice(&e.rel_offset.to_be_bytes());
        }
        seal_crc(&mut buf);
        write_replace(&self.path("timeindex"), &buf)?;
        self.persisted_entries.set(n);
        Ok(())
    }

    /// Loads the index files if present and plausible for a file of `file_size` bytes:
    /// whole entries, strictly increasing, inside the file. Anything else is ignored
    /// (the caller rebuilds by scanning). Returns whether an index was loaded.
    pub fn load_index(&self, file_size: u64) -> bool {
        self.reset_index();
        let Ok(raw) = std::fs::read(self.path("index")) else {
            return false;
        };
        let traw = std::fs::read(self.path("timeindex")).unwrap_or_default();
        let (Some(raw), Some(traw)) = (check_crc(&raw), check_crc(&traw)) else {
            return false;
        };
        if raw.len() % INDEX_ENTRY_BYTES != 0 || traw.len() % TIME_ENTRY_BYTES != 0 {
            return false;
        }
        let mut index = Vec::with_capacity(raw.len() / INDEX_ENTRY_BYTES);
        for c in raw.chunks_exact(INDEX_ENTRY_BYTES) {
            let e = IndexEntry {
                rel_offset: u32::from_be_bytes(c[0..4].try_into().expect("4 bytes")),
                pos: u32::from_be_bytes(c[4..8].try_into().expect("4 bytes")),
            };
            let ok = u64::from(e.pos) < file_size
                && e.pos > 0
                && index
                    .last()
                    .is_none_or(|p: &IndexEntry| e.rel_offset > p.rel_offset && e.pos > p.pos);
            if !ok {
                return false;
            }
            index.push(e);
        }
        let last_rel = index.last().map_or(0, |e| e.rel_offset);
        let mut time = Vec::with_capacity(traw.len() / TIME_ENTRY_BYTES);
        for c in traw.chunks_exact(TIME_ENTRY_BYTES) {
            let e = TimeEntry {
                max_ts_before: i64::from_be_bytes(c[0..8].try_into().expect("8 bytes")),
                rel_offset: u32::from_be_bytes(c[8..12].try_into().expect("4 bytes")),
            };
            // Entries past the last offset entry would describe batches not yet
            // re-scanned; the scan re-adds them.
            if e.rel_offset > last_rel {
                break;
            }
            let ok = time.last().is_none_or(|p: &TimeEntry| {
                e.max_ts_before > p.max_ts_before && e.rel_offset > p.rel_offset
            });
            if !ok {
                return false;
            }
            time.push(e);
        }
        let loaded = !index.is_empty();
        self.persisted_entries.set(index.len());
        *self.index.borrow_mut() = index;
        *self.time_index.borrow_mut() = time;
        loaded
    }

    /// Forgets the index files on disk (before a rebuild, so a crash mid-rebuild
    /// cannot leave a stale index looking valid).
    pub fn remove_files(&self) {
        for ext in ["log", "index", "timeindex"] {
            let _ = std::fs::remove_file(self.path(ext));
        }
    }
}

/// Index files end with a CRC32C of their entries: a torn or bit-flipped index is
/// rebuilt instead of pointing reads at the wrong place.
fn seal_crc(buf: &mut Vec<u8>) {
    let crc = crc32c::crc32c(buf);
    buf.extend_from_slice(&crc.to_be_bytes());
}

fn check_crc(raw: &[u8]) -> Option<&[u8]> {
    let split = raw.len().checked_sub(4)?;
    let (entries, crc) = raw.split_at(split);
    (crc32c::crc32c(entries).to_be_bytes() == crc).then_some(entries)
}

/// Atomically replaces `path` with `data` (write tmp, rename).
pub(crate) fn write_replace(path: &Path, data: &[u8]) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, data) {
        // A partial tmp file on a full disk would hold on to the space.
        let _ = std::fs::remove_file(&tmp);
        return Err(StorageError::io("write", &tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| StorageError::io("rename", path, e))
}

/// Like `write_replace` but durable: fsync the file before the rename and the
/// directory after it.
pub(crate) fn write_replace_durable(path: &Path, data: &[u8]) -> Result<(), StorageError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
    f.write_all(data)
        .map_err(|e| StorageError::io("write", &tmp, e))?;
    f.sync_all()
        .map_err(|e| StorageError::io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StorageError::io("rename", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// `write_replace_durable` with both fsyncs through io_uring: on the request path
/// (a partition's first batch of an epoch) a blocking fsync would stall every other
/// partition of the shard for the disk's sync latency.
pub(crate) async fn write_replace_durable_async(
    path: &Path,
    data: &[u8],
) -> Result<(), StorageError> {
    write_replace_durable_async_if(path, data, || true)
        .await
        .map(|_| ())
}

/// `write_replace_durable_async` that renames only if `still_wanted()` holds once the
/// data is durable (checked with no await before the rename, so nothing the caller
/// guards against can slip in between). Returns whether it renamed.
pub(crate) async fn write_replace_durable_async_if(
    path: &Path,
    data: &[u8],
    still_wanted: impl FnOnce() -> bool,
) -> Result<bool, StorageError> {
    thread_local!(static NEXT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    // A name per write: writes can overlap across awaits (a dropped log's last write
    // and its reopened successor's), and a shared tmp name would be renamed under one
    // of them. `remove_stale_tmp` clears the ones a crash leaves.
    let n = NEXT.with(|c| c.replace(c.get() + 1));
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!("{STALE_TMP_MARK}{n}"));
    let tmp = path.with_file_name(name);
    if let Err(e) = std::fs::write(&tmp, data) {
        let _ = std::fs::remove_file(&tmp);
        return Err(StorageError::io("write", &tmp, e));
    }
    let file = glommio::io::OpenOptions::new()
        .read(true)
        .buffered_open(&tmp)
        .await
        .map_err(|e| StorageError::io("open", &tmp, e))?;
    let synced = file.fdatasync().await;
    let _ = file.close().await;
    if let Err(e) = synced {
        let _ = std::fs::remove_file(&tmp);
        return Err(StorageError::io("fsync", &tmp, e));
    }
    if !still_wanted() {
        let _ = std::fs::remove_file(&tmp);
        return Ok(false);
    }
    std::fs::rename(&tmp, path).map_err(|e| StorageError::io("rename", path, e))?;
    sync_dir_async(path.parent().unwrap_or(Path::new(".")))
        .await
        .map(|()| true)
}

const STALE_TMP_MARK: &str = ".tmp-";

/// Removes what `write_replace_durable_async` left in `dir` when a crash came between
/// its write and its rename. Call only while no write can be in flight (open).
pub(crate) fn remove_stale_tmp(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().contains(STALE_TMP_MARK) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `sync_dir` through io_uring (see `write_replace_durable_async`).
pub(crate) async fn sync_dir_async(dir: &Path) -> Result<(), StorageError> {
    // glommio opens a relative directory path against no fd (EBADF).
    let abs = std::path::absolute(dir).map_err(|e| StorageError::io("open dir", dir, e))?;
    let d = glommio::io::Directory::open(&abs)
        .await
        .map_err(|e| StorageError::io("open dir", dir, e))?;
    let synced = d.sync().await;
    let _ = d.close().await;
    synced.map_err(|e| StorageError::io("fsync dir", dir, e))
}

/// fsync a directory so created / renamed / removed names survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync dir", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_entries_are_added_every_interval_and_looked_up() {
        let seg = Segment::new(Path::new("/nonexistent"), 100, 0);
        let mut pos = 0;
        for i in 0..10 {
            seg.on_batch(100 + i * 2, 100 + i * 2 + 1, pos, 1000, 10 * i, 2500);
            pos += 1000;
        }
        let idx = seg.index.borrow().clone();
        assert_eq!(
            idx.iter().map(|e| e.pos).collect::<Vec<_>>(),
            vec![3000, 6000, 9000]
        );
        assert_eq!(seg.lookup(100), (0, 100));
        assert_eq!(seg.lookup(107), (3000, 106));
        assert_eq!(seg.lookup(112), (6000, 112));
        assert_eq!(seg.lookup(119), (9000, 118));
        // max ts before offset 106 (batches 0..=2) is 20
        assert_eq!(seg.time_lookup(21), 106);
        assert_eq!(seg.time_lookup(5), 100);
        assert_eq!(seg.next_offset.get(), 120);
    }

    #[test]
    fn persisted_index_round_trips_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::new(dir.path(), 0, 0);
        let mut pos = 0;
        for i in 0..20 {
            seg.on_batch(i, i, pos, 100, i, 250);
            pos += 100;
        }
        seg.persist_index().unwrap();
        let again = Segment::new(dir.path(), 0, 0);
        assert!(again.load_index(pos));
        assert_eq!(*again.index.borrow(), *seg.index.borrow());
        assert_eq!(*again.time_index.borrow(), *seg.time_index.borrow());
        // Entries beyond the file are refused.
        assert!(!again.load_index(200));
        std::fs::write(seg.path("index"), [1, 2, 3]).unwrap();
        assert!(!again.load_index(pos));
        // Plausible entries without the right checksum are refused too.
        seg.persist_index().unwrap();
        let mut raw = std::fs::read(seg.path("index")).unwrap();
        raw[5] ^= 1;
        std::fs::write(seg.path("index"), &raw).unwrap();
        assert!(!again.load_index(pos));
    }
}
