//! The data directory's lock: one process at a time delivers from a data directory.
//!
//! [`DataDirLock::acquire`] takes an exclusive advisory lock (`flock`) on the data directory
//! itself and holds it for as long as the value lives; the kernel drops it when the process
//! ends, even on `kill -9`, so a crash never leaves a stale lock behind. Locking the directory,
//! not a file in it, means that deleting a file (the old `zdmap.lock`) cannot let a second
//! server in. A second
//! `zdmap serve` on the same directory stops at start with a message naming the directory.
//! `zdmap dead-letters` does not take it: it may read and replay while a server runs.

use super::QueueError;
use std::fs::File;
use std::path::Path;

/// The held lock; released on drop.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Locks `data_dir` (created if needed), or says which directory is in use.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, QueueError> {
        std::fs::create_dir_all(data_dir).map_err(|source| QueueError::Io {
            what: "create the data directory",
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.to_path_buf();
        let file = File::open(data_dir).map_err(|source| QueueError::Io {
            what: "open the data directory",
            path: path.clone(),
            source,
        })?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(QueueError::InUse { dir: path }),
            Err(e) => Err(QueueError::Io {
                what: "lock",
                path,
                source: e.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first");
        let e = DataDirLock::acquire(dir.path()).expect_err("second");
        assert!(matches!(e, QueueError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("is in use by another zdmap"), "{e}");
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again");
    }

    #[test]
    fn no_file_deleted_in_the_directory_lets_a_second_holder_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = DataDirLock::acquire(dir.path()).expect("first");
        for entry in std::fs::read_dir(dir.path()).expect("dir") {
            std::fs::remove_file(entry.expect("entry").path()).expect("remove");
        }
        assert!(matches!(
            DataDirLock::acquire(dir.path()),
            Err(QueueError::InUse { .. })
        ));
    }
}
