//! One instance of a service at a time: an exclusive `flock` on a lock
//! file, held for the life of the holder and released by the kernel when
//! its process dies (even by `kill -9`), so a stale lock never blocks a
//! restart. The holder writes its pid into the file, and whoever is
//! refused names it: "already served by pid N".
//!
//! Used for the simulated host's control socket (one host per socket) and
//! for the daemons (one per domain, side and device kind).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InstanceLockError {
    /// Another process holds it.
    #[error("already served by {holder} (lock {})", path.display())]
    Held {
        /// The lock file.
        path: PathBuf,
        /// `pid N`, or `another process` when the file names none.
        holder: String,
    },
    /// The lock file could not be opened, locked or written.
    #[error("lock {}: {error}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        error: std::io::Error,
    },
}

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the lock at `path` (made with mode 0600 if missing; its
    /// folder must exist), without waiting: refused with
    /// [`InstanceLockError::Held`] if another open of it holds the lock,
    /// in this process or another.
    pub fn acquire(path: impl AsRef<Path>) -> Result<InstanceLock, InstanceLockError> {
        let path = path.as_ref().to_path_buf();
        let io = |error| InstanceLockError::Io {
            path: path.clone(),
            error,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "another process".to_string(),
                };
                return Err(InstanceLockError::Held { path, holder });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(InstanceLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let first = InstanceLock::acquire(&p).unwrap();
        let e = InstanceLock::acquire(&p).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("already served by pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("x.lock"), "{msg}");
        drop(first);
        let again = InstanceLock::acquire(&p).unwrap();
        assert_eq!(again.path(), p);
    }

    #[test]
    fn a_lock_in_a_missing_folder_says_where() {
        let e = InstanceLock::acquire("/nonexistent-xenring/x.lock").unwrap_err();
        assert!(matches!(e, InstanceLockError::Io { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent-xenring/x.lock"), "{e}");
    }
}
