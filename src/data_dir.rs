//! The data directory's owner: one broker process at a time.
//!
//! Two brokers writing one directory replace each other's acknowledged records, so
//! `runnel serve` takes an exclusive `flock` on `<data dir>/.lock` before it opens
//! anything else there and holds it for the life of the process. The kernel drops it
//! when the process ends however it ends (SIGKILL included), so a crash never leaves a
//! stale lock behind. The file holds the owner's pid, for the message a second broker
//! prints.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = ".lock";

/// Holds the lock while alive (the open file description carries it).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    pub path: PathBuf,
}

#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; its pid when the file names one.
    Held { path: PathBuf, pid: Option<u32> },
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { path, pid } => {
                let dir = path.parent().unwrap_or(path).display();
                match pid {
                    Some(pid) => write!(
                        f,
                        "data directory {dir} is in use by another broker (pid {pid} holds {}); \
                         stop it or give this one another --data-dir",
                        path.display()
                    ),
                    None => write!(
                        f,
                        "data directory {dir} is in use by another process (it holds {}); \
                         stop it or give this one another --data-dir",
                        path.display()
                    ),
                }
            }
            LockError::Io { path, error } => {
                write!(f, "cannot lock {}: {error}", path.display())
            }
        }
    }
}

impl DataDirLock {
    /// Takes the lock without waiting: a second broker must fail at once, not queue.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |error| LockError::Io {
            path: path.clone(),
            error,
        };
        // Not truncated on open: the holder's pid must survive a loser's open.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(error));
            }
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(LockError::Held { path, pid });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        // flock locks belong to open file descriptions: a second open in the same
        // process conflicts exactly as another process would.
        match DataDirLock::acquire(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free once the holder is gone");
    }
}
