//! Removing a partition directory without stalling its shard.
//!
//! A deleted topic's logs can be gigabytes; unlinking them with one synchronous
//! `remove_dir_all` on the shard thread holds the reactor for seconds, and everything
//! else on that shard (the Raft driver on shard 0, replica fetchers, the signal poll)
//! waits. So, like Kafka's `<partition>.<id>-delete` directories, a directory is first
//! renamed to a `*.delete` name beside it (one `rename`: the partition's name is free
//! at once, for a recreated topic's fresh log), and its files are then unlinked in the
//! background one file per step on glommio's blocking thread, the shard awaiting each
//! step. A crash in between leaves a `*.delete` directory, which the broker's startup
//! sweep removes.

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Ends the name of a directory whose removal has started. A partition directory's
/// name ends in `-<partition>`, so this never names a live one.
pub const DELETE_SUFFIX: &str = ".delete";

/// Passes over a directory before giving up: a task that still held the closed log
/// (a compaction, a snapshot) may write a file into it after the first listing.
const REMOVE_PASSES_MAX: u32 = 3;
/// Pause between passes, so such a late writer has finished.
const REMOVE_PASS_BACKOFF: Duration = Duration::from_millis(100);

thread_local! {
    static RENAMES: Cell<u64> = const { Cell::new(0) };
}

/// Renames `dir` to a fresh `<name>.<nonce>.delete` beside it and returns the new path.
/// One `rename` syscall: cheap whatever the directory holds.
pub fn rename_for_delete(dir: &Path) -> io::Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{}: no directory name", dir.display())))?
        .to_string_lossy()
        .into_owned();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = RENAMES.with(|r| {
        r.set(r.get() + 1);
        r.get()
    });
    // The thread keeps two shards renaming in the same nanosecond apart.
    let tid = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::thread::current().id().hash(&mut h);
        h.finish()
    };
    let target = dir.with_file_name(format!(
        "{name}.{:016x}{DELETE_SUFFIX}",
        nanos ^ (n << 48) ^ tid
    ));
    assert!(target.to_string_lossy().ends_with(DELETE_SUFFIX));
    std::fs::rename(dir, &target)?;
    Ok(target)
}

/// Removes `dir` (already renamed out of the way, see `rename_for_delete`) in a task of
/// its own on the current shard, one file per step off the shard thread, and logs
/// `what` (the partition directory's original name), the files and the bytes freed.
pub fn remove_in_background(dir: PathBuf, what: String) {
    glommio::spawn_local(async move {
        match remove_dir_stepwise(&dir).await {
            Ok((files, bytes)) => {
                tracing::info!(partition_dir = %what, files, bytes, "deleted partition data")
            }
            Err(e) => {
                tracing::warn!(partition_dir = %what, dir = %dir.display(), error = %e, "deleting partition data failed; it is retried at the next start")
            }
        }
    })
    .detach();
}

/// Runs `f` on the shard's blocking thread (glommio's pool, one thread per executor),
/// so the shard's reactor keeps running while it blocks.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(f).await
}

/// Unlinks everything under `dir`, then `dir`. Returns (files, bytes) removed.
pub async fn remove_dir_stepwise(dir: &Path) -> io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut last_error = None;
    for pass in 0..REMOVE_PASSES_MAX {
        if pass > 0 {
            glommio::timer::sleep(REMOVE_PASS_BACKOFF).await;
        }
        let root = dir.to_path_buf();
        let listing = match blocking(move || list_tree(&root)).await {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((files, bytes)),
            Err(e) => return Err(e),
        };
        // One unlink per step: a big file's extents take the kernel a while to free,
        // and glommio's other blocking work on this shard runs between the steps.
        for (path, len) in listing.files {
            match blocking(move || std::fs::remove_file(path)).await {
                Ok(()) => {
                    files += 1;
                    bytes += len;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => last_error = Some(e),
            }
        }
        // Deepest first, the root last.
        for d in listing.dirs.into_iter().rev() {
            match blocking(move || std::fs::remove_dir(d)).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => last_error = Some(e),
            }
        }
        if !dir.exists() {
            return Ok((files, bytes));
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("directory still not empty")))
}

struct Tree {
    /// Regular files (and anything that is not a directory) with their sizes.
    files: Vec<(PathBuf, u64)>,
    /// Directories, each after its parent; the root first.
    dirs: Vec<PathBuf>,
}

/// Lists `root` recursively without following symlinks (a symlink is unlinked, never
/// its target).
fn list_tree(root: &Path) -> io::Result<Tree> {
    let mut tree = Tree {
        files: Vec::new(),
        dirs: vec![root.to_path_buf()],
    };
    let mut next = 0;
    while next < tree.dirs.len() {
        let dir = tree.dirs[next].clone();
        next += 1;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound && next > 1 => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                tree.dirs.push(entry.path());
            } else {
                tree.files.push((entry.path(), meta.len()));
            }
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_partition_dir_is_removed_with_everything_in_it() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let parent = tempfile::tempdir().unwrap();
                let dir = parent.path().join("orders-3");
                std::fs::create_dir_all(dir.join("sub")).unwrap();
                std::fs::write(dir.join("00000000000000000000.log"), vec![7u8; 10_000]).unwrap();
                std::fs::write(dir.join("sub").join("x"), vec![1u8; 5]).unwrap();
                let renamed = rename_for_delete(&dir).unwrap();
                assert!(!dir.exists(), "the partition's name is free at once");
                assert!(renamed.to_string_lossy().ends_with(DELETE_SUFFIX));
                assert!(renamed
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("orders-3."));
                let (files, bytes) = remove_dir_stepwise(&renamed).await.unwrap();
                assert_eq!((files, bytes), (2, 10_005));
                assert!(!renamed.exists());
                assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
