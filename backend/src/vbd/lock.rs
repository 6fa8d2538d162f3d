//! Image locks, in qemu's byte-range scheme (`block/file-posix.c`), so
//! qemu (`qemu-nbd`, `qemu-img`, `qemu-io`, a VM) and a second xenring
//! device see each other.
//!
//! Locks are open-file-description (OFD) locks (`F_OFD_SETLK`): they
//! belong to the open file, not the process, so two devices of one
//! daemon on the same image conflict as two processes do, and closing
//! the file drops them. Each permission `i` (qemu's bits: 0 consistent
//! read, 1 write, 2 write-unchanged, 3 resize) has two bytes:
//!
//! ```text
//!   byte 100 + i   read-locked by whoever holds permission i
//!   byte 200 + i   read-locked by whoever does not let others hold it
//! ```
//!
//! Taking an image: read-lock our bytes, then test (`F_OFD_GETLK` with a
//! write lock, which sees every other holder of a read lock) the bytes
//! that would conflict: `200 + i` for each permission we hold and
//! `100 + i` for each we do not share. As a qemu guest disk does, a
//! writable device holds read and write and shares read and
//! write-unchanged; a read-only one holds read and shares the same
//! (several read-only devices share an image, no writer may join them).
//! On a conflict, `/proc/*/fdinfo` names the holders that can be seen.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg};

/// First byte of the "holds permission i" range.
pub const PERM_BASE: i64 = 100;
/// First byte of the "does not share permission i" range.
pub const SHARED_BASE: i64 = 200;

/// qemu's permission bits.
const PERMS: [(u8, &str); 4] = [
    (1 << 0, "consistent read"),
    (1 << 1, "write"),
    (1 << 2, "write unchanged"),
    (1 << 3, "resize"),
];
const READ: u8 = 1 << 0;
const WRITE: u8 = 1 << 1;
const WRITE_UNCHANGED: u8 = 1 << 2;

/// What a device holds and what it lets others hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    /// Permissions held.
    pub held: u8,
    /// Permissions others may hold too.
    pub shared: u8,
}

impl Perms {
    /// A device's permissions: read (and write unless `readonly`), and
    /// others may read only.
    pub fn device(readonly: bool) -> Perms {
        Perms {
            held: if readonly { READ } else { READ | WRITE },
            shared: READ | WRITE_UNCHANGED,
        }
    }
}

fn flock(kind: libc::c_int, byte: i64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    }
}

/// Whether another open file holds a lock on `byte`.
fn taken_by_another(file: &File, byte: i64) -> io::Result<bool> {
    let mut probe = flock(libc::F_WRLCK, byte);
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe)).map_err(io::Error::from)?;
    Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
}

/// Takes `perms` on `file` (an image at `path`): an error naming the
/// permission, the conflict and who holds it if another open file of the
/// image conflicts (and then `file` holds no lock). The locks go when
/// `file` is closed.
pub fn lock(file: &File, path: &Path, perms: Perms) -> io::Result<()> {
    let r = try_lock(file, path, perms);
    if r.is_err() {
        let mut all = flock(libc::F_UNLCK, PERM_BASE);
        all.l_len = SHARED_BASE + PERMS.len() as i64 - PERM_BASE;
        let _ = fcntl(file, FcntlArg::F_OFD_SETLK(&all));
    }
    r
}

fn try_lock(file: &File, path: &Path, perms: Perms) -> io::Result<()> {
    for (i, (bit, _)) in PERMS.iter().enumerate() {
        let i = i as i64;
        if perms.held & bit != 0 {
            fcntl(
                file,
                FcntlArg::F_OFD_SETLK(&flock(libc::F_RDLCK, PERM_BASE + i)),
            )
            .map_err(|e| lock_error(path, e))?;
        }
        if perms.shared & bit == 0 {
            fcntl(
                file,
                FcntlArg::F_OFD_SETLK(&flock(libc::F_RDLCK, SHARED_BASE + i)),
            )
            .map_err(|e| lock_error(path, e))?;
        }
    }
    for (i, (bit, name)) in PERMS.iter().enumerate() {
        let i = i as i64;
        let conflict = if perms.held & bit != 0 && taken_by_another(file, SHARED_BASE + i)? {
            Some((
                SHARED_BASE + i,
                format!("does not share the {name:?} permission we need"),
            ))
        } else if perms.shared & bit == 0 && taken_by_another(file, PERM_BASE + i)? {
            Some((
                PERM_BASE + i,
                format!("holds the {name:?} permission we do not share"),
            ))
        } else {
            None
        };
        if let Some((byte, what)) = conflict {
            let who = holders(file, byte);
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "{} is in use: {who} {what} (qemu's lock byte {byte}); is another \
                     device, qemu-nbd or VM using the image?",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

fn lock_error(path: &Path, e: nix::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!("locking {}: {e}", path.display()),
    )
}

/// Who holds a lock on `byte` of `file`'s inode, from the `lock:` lines
/// of `/proc/<pid>/fdinfo/<fd>` (OFD locks show pid -1 in `/proc/locks`):
/// "qemu-nbd (pid 42)", or "another process" when none can be seen (an
/// other user's process, without the right to look).
fn holders(file: &File, byte: i64) -> String {
    /// Processes looked at, at most (a conflict is an error path, but a
    /// bound keeps it short on a busy host).
    const MAX_PROCS: usize = 1 << 16;
    let Ok(meta) = file.metadata() else {
        return "another process".into();
    };
    let dev = rustix::fs::Dev::from(meta.dev());
    let key = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        meta.ino()
    );
    let me = std::process::id();
    let own_fd = file.as_raw_fd().to_string();
    let mut found: Vec<String> = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return "another process".into();
    };
    for p in procs.flatten().take(MAX_PROCS) {
        let name = p.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            if pid == me && fd.file_name().to_str() == Some(own_fd.as_str()) {
                return false;
            }
            let text = std::fs::read_to_string(fd.path()).unwrap_or_default();
            text.lines().any(|l| covers(l, &key, byte))
        });
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            found.push(if pid == me {
                format!("this daemon (pid {pid}, another device)")
            } else {
                format!("{comm} (pid {pid})")
            });
            if found.len() == 4 {
                break;
            }
        }
    }
    if found.is_empty() {
        "another process".into()
    } else {
        found.join(", ")
    }
}

/// Whether an fdinfo line (`lock:\t1: OFDLCK ADVISORY READ -1 fe:00:123 100 101`)
/// is a lock on inode `key` covering `byte`.
fn covers(line: &str, key: &str, byte: i64) -> bool {
    let Some(rest) = line.strip_prefix("lock:") else {
        return false;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // [n:, OFDLCK|POSIX, ADVISORY, READ|WRITE, pid, dev:ino, start, end]
    if f.len() < 8 || f[5] != key {
        return false;
    }
    let start = f[6].parse::<i64>().unwrap_or(i64::MAX);
    let end = if f[7] == "EOF" {
        i64::MAX
    } else {
        f[7].parse::<i64>().unwrap_or(-1)
    };
    (start..=end).contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(p: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    }

    #[test]
    fn writers_exclude_each_other_and_readers_share() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let (a, b, c) = (open(&p), open(&p), open(&p));
        lock(&a, &p, Perms::device(false)).unwrap();
        let e = lock(&b, &p, Perms::device(false)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("in use") && msg.contains("this daemon"),
            "{msg}"
        );
        let e = lock(&c, &p, Perms::device(true)).unwrap_err();
        assert!(e.to_string().contains("\"write\""), "{e}");
        drop((a, b, c));
        // Two readers share; a writer may not join them.
        let (a, b, c) = (open(&p), open(&p), open(&p));
        lock(&a, &p, Perms::device(true)).unwrap();
        lock(&b, &p, Perms::device(true)).unwrap();
        assert!(lock(&c, &p, Perms::device(false)).is_err());
        drop((a, b));
        // Closing the files dropped their locks.
        let d = open(&p);
        lock(&d, &p, Perms::device(false)).unwrap();
    }

    #[test]
    fn fdinfo_lines_are_matched_by_inode_and_range() {
        let l = "lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:10010695 100 101";
        assert!(covers(l, "fe:00:10010695", 101));
        assert!(!covers(l, "fe:00:10010695", 102));
        assert!(!covers(l, "fe:00:1001069", 100));
        assert!(covers(
            "lock: 2: POSIX ADVISORY WRITE 7 08:01:5 0 EOF",
            "08:01:5",
            201
        ));
        assert!(!covers("pos: 0", "08:01:5", 0));
    }
}
