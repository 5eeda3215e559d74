//! The Raft log and hard state on disk (`data/meta/raft.log`), behind raft-rs's
//! `MemStorage`.
//!
//! One append-only file of records `[u32 len][u32 crc32c][u8 kind][protobuf]`, kind 1 an
//! `Entry`, kind 2 a `HardState`, kind 3 a `ConfState` (the voter set the log was
//! written under, stored once). Replay applies them in file order with Raft's own
//! append rule (an entry at an index already present replaces it and everything after
//! it), and the last hard state wins, so overwriting a follower's divergent tail is just
//! another append. The stored voter set is what the quorum checks the configured one
//! against at start (`stored_voters`): a broker restarted with another list would form
//! a quorum of its own. A torn or corrupt record ends replay and is truncated away (a crash
//! mid-write); it was never acknowledged, because every `persist` ends with fdatasync
//! before raft-rs is told the entries are stable.
//!
//! Runs on shard 0 only, with plain std file I/O: metadata changes are rare and small.
//! The file is never compacted yet (no snapshots): the metadata log of a broker is
//! kilobytes per topic.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};
use raft::storage::MemStorage;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;
/// A record larger than this is a corrupt length, not a metadata entry (guards the
/// allocation on replay).
const RECORD_BYTES_MAX: usize = 64 << 20;

pub struct RaftLog {
    path: PathBuf,
    file: File,
    /// Raft ids of the voters stored in the log (sorted); `None` for a fresh log or one
    /// written before the voter set was stored.
    stored_voters: Option<Vec<u64>>,
    /// Bytes the replay at open cut off (a torn or corrupt record and all after it).
    pub replay_dropped_bytes: u64,
    /// The commit index of the last hard state replayed.
    pub replay_commit: u64,
}

impl RaftLog {
    /// Opens (or creates) the log in `dir`, replays it into a `MemStorage` whose
    /// configuration is `voters` (the same on every node, so fresh nodes agree).
    pub fn open(dir: &Path, voters: Vec<u64>) -> std::io::Result<(RaftLog, MemStorage)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("raft.log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let storage = MemStorage::new_with_conf_state(ConfState::from((voters, vec![])));
        let mut good_len: u64 = 0;
        let mut entries = 0usize;
        let mut stored_voters: Option<Vec<u64>> = None;
        {
            let mut reader = BufReader::new(&file);
            let mut head = [0u8; 9];
            loop {
                if !read_full(&mut reader, &mut head)? {
                    break;
                }
                let len = u32::from_be_bytes(head[0..4].try_into().unwrap()) as usize;
                let crc = u32::from_be_bytes(head[4..8].try_into().unwrap());
                let kind = head[8];
                if len > RECORD_BYTES_MAX {
                    tracing::warn!(path = %path.display(), offset = good_len, "raft log: implausible record length, truncating");
                    break;
                }
                let mut body = vec![0u8; len];
                if !read_full(&mut reader, &mut body)? {
                    break;
                }
                let mut c = crc32c::crc32c(&[kind]);
                c = crc32c::crc32c_append(c, &body);
                if c != crc {
                    tracing::warn!(path = %path.display(), offset = good_len, "raft log: torn or corrupt record, truncating");
                    break;
                }
                let decoded = match kind {
                    KIND_ENTRY => Entry::parse_from_bytes(&body).map(|e| {
                        // Raft's append rule: a new entry at index i drops i.. first.
                        storage.wl().append(&[e]).map_err(std::io::Error::other)
                    }),
                    KIND_HARD_STATE => HardState::parse_from_bytes(&body).map(|hs| {
                        storage.wl().set_hardstate(hs);
                        Ok(())
                    }),
                    KIND_CONF_STATE => ConfState::parse_from_bytes(&body).map(|cs| {
                        let mut v = cs.voters;
                        v.sort_unstable();
                        stored_voters = Some(v);
                        Ok(())
                    }),
                    _ => Ok(Err(std::io::Error::other(format!(
                        "unknown record kind {kind}"
                    )))),
                };
                match decoded {
                    Ok(Ok(())) => {}
                    // The checksum matched, so this is not a torn write: refuse rather
                    // than drop metadata.
                    Ok(Err(e)) => {
                        return Err(std::io::Error::other(format!(
                            "{}: record at byte {good_len}: {e}; refusing to start",
                            path.display()
                        )))
                    }
                    Err(e) => {
                        return Err(std::io::Error::other(format!(
                            "{}: record at byte {good_len} has a valid checksum but does not decode ({e}); refusing to start",
                            path.display()
                        )))
                    }
                }
                entries += usize::from(kind == KIND_ENTRY);
                good_len += 9 + len as u64;
            }
        }
        let len = file.metadata()?.len();
        if len != good_len {
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        // Entries past the last index a hard state says is committed may have been
        // appended and not yet acknowledged: they stay (Raft decides their fate).
        let hs = storage.rl().hard_state().clone();
        tracing::info!(
            records = entries,
            term = hs.term,
            commit = hs.commit,
            "raft log replayed"
        );
        let log = RaftLog {
            path,
            file,
            stored_voters,
            replay_dropped_bytes: len.saturating_sub(good_len),
            replay_commit: hs.commit,
        };
        Ok((log, storage))
    }

    /// The voter set (Raft ids, sorted) this log was written under, if it holds one.
    pub fn stored_voters(&self) -> Option<&[u64]> {
        self.stored_voters.as_deref()
    }

    /// Stores `voters` as this log's voter set (fdatasync'ed), for logs that have none:
    /// a fresh one takes the configured list.
    pub fn store_voters(&mut self, voters: &[u64]) -> std::io::Result<()> {
        assert!(self.stored_voters.is_none(), "the voter set is stored once");
        let mut sorted = voters.to_vec();
        sorted.sort_unstable();
        let cs = ConfState::from((sorted.clone(), vec![]));
        let mut buf = Vec::new();
        push_record(
            &mut buf,
            KIND_CONF_STATE,
            &cs.write_to_bytes().map_err(std::io::Error::other)?,
        );
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.stored_voters = Some(sorted);
        Ok(())
    }

    /// Appends `entries` and (when given) the hard state, then fdatasyncs: after this
    /// returns they survive a crash.
    pub fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>) -> std::io::Result<()> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in entries {
            push_record(
                &mut buf,
                KIND_ENTRY,
                &e.write_to_bytes().map_err(std::io::Error::other)?,
            );
        }
        if let Some(hs) = hs {
            push_record(
                &mut buf,
                KIND_HARD_STATE,
                &hs.write_to_bytes().map_err(std::io::Error::other)?,
            );
        }
        self.file.write_all(&buf)?;
        self.file.sync_data().map_err(|e| {
            tracing::error!(path = %self.path.display(), error = %e, "raft log fdatasync failed");
            e
        })
    }
}

fn push_record(buf: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), body);
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&crc.to_be_bytes());
    buf.push(kind);
    buf.extend_from_slice(body);
}

/// Ok(false): clean or torn end of file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn replay_applies_raft_append_rule_and_last_hard_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = RaftLog::open(dir.path(), vec![1, 2, 3]).unwrap();
            log.persist(
                &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
                None,
            )
            .unwrap();
            let hs = HardState {
                term: 2,
                vote: 2,
                commit: 1,
                ..Default::default()
            };
            // A new leader overwrote index 2 onward.
            log.persist(&[entry(2, 2, b"B")], Some(&hs)).unwrap();
        }
        let (_, storage) = RaftLog::open(dir.path(), vec![1, 2, 3]).unwrap();
        assert_eq!(storage.last_index().unwrap(), 2);
        assert_eq!(storage.term(2).unwrap(), 2);
        let state = storage.initial_state().unwrap();
        assert_eq!((state.hard_state.term, state.hard_state.commit), (2, 1));
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
    }

    #[test]
    fn the_voter_set_is_stored_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = RaftLog::open(dir.path(), vec![3, 1, 2]).unwrap();
            assert_eq!(log.stored_voters(), None, "a fresh log holds no voter set");
            log.store_voters(&[3, 1, 2]).unwrap();
            log.persist(&[entry(1, 1, b"a")], None).unwrap();
        }
        // Opened with another list: the stored one is what the caller checks against.
        let (log, storage) = RaftLog::open(dir.path(), vec![3]).unwrap();
        assert_eq!(log.stored_voters(), Some(&[1, 2, 3][..]));
        assert_eq!(storage.last_index().unwrap(), 1);
    }

    #[test]
    fn torn_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = RaftLog::open(dir.path(), vec![1]).unwrap();
            log.persist(&[entry(1, 1, b"a")], None).unwrap();
        }
        let path = dir.path().join("raft.log");
        let good = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[0, 0, 0, 40, 1, 2, 3])
            .unwrap();
        let (_, storage) = RaftLog::open(dir.path(), vec![1]).unwrap();
        assert_eq!(storage.last_index().unwrap(), 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
    }
}
