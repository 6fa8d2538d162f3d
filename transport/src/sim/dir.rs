//! The simulated host's socket folder, kept private.
//!
//! Whoever can connect to the host's sockets can join any domain, dom0
//! included, map memory, destroy domains, and speak to XenStore as any
//! domain (the socket a client opens is its identity). So:
//! * the folder of the control socket is created with mode 0700; an
//!   existing one is accepted only if it is a real directory (not a
//!   symbolic link), owned by the effective user, and writable by nobody
//!   else (no group or other write bit), so nobody else can have put or
//!   swapped anything in it (a `/tmp/xenring-sim-<uid>` made by another
//!   user with mode 0777 is refused). An existing folder of the user's
//!   with mode 0755 (what `tempfile` makes) is accepted, not changed: the
//!   control socket itself is mode 0600 ([`SOCKET_MODE`]);
//! * `xenstore/` inside it is the user's alone: made with mode 0700, or
//!   set to it if it exists as the user's;
//! * clients check the control socket's folder the same way before they
//!   connect ([`check_private_dir`]), so they never talk to a host someone
//!   else set up in a folder they made.

/// Mode of the control socket (connecting needs write permission on it).
pub(super) const SOCKET_MODE: u32 = 0o600;

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Mode bits that let group or others change what is in a folder.
const SHARED_WRITE: u32 = 0o022;

/// Creates `dir` with mode 0700 (its missing parents with the default
/// mode) unless it exists, then checks it as [`check_private_dir`] does.
pub(super) fn make_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        // Someone (maybe not us) made it: the checks decide.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("socket folder {}: {e}", dir.display()),
            ))
        }
    }
    check_private_dir(dir)
}

/// Makes `dir`, a folder inside one [`make_private_dir`] accepted,
/// private: created with mode 0700, or, if it exists as the user's own
/// directory (made by an older version with the default mode), set to
/// mode 0700; then checked as [`check_private_dir`] does.
pub(super) fn make_private_subdir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let md = std::fs::symlink_metadata(dir)?;
            let me = rustix::process::geteuid().as_raw();
            if md.is_dir() && md.uid() == me {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("socket folder {}: {e}", dir.display()),
            ))
        }
    }
    check_private_dir(dir)
}

/// Checks that `dir` is a directory (not a symbolic link) owned by the
/// effective user that group and others cannot write (`PermissionDenied`
/// otherwise, with what to do).
pub(crate) fn check_private_dir(dir: &Path) -> io::Result<()> {
    let shown = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let md = std::fs::symlink_metadata(shown)
        .map_err(|e| io::Error::new(e.kind(), format!("socket folder {}: {e}", shown.display())))?;
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "socket folder {}: {why}; the simulated host's sockets must be in a folder \
                 only you can reach (anyone who can connect to them can join as dom0), so \
                 it refuses this one: remove it or pick another socket path",
                shown.display()
            ),
        ))
    };
    if md.file_type().is_symlink() {
        return refuse("is a symbolic link".into());
    }
    if !md.is_dir() {
        return refuse("is not a directory".into());
    }
    let me = rustix::process::geteuid().as_raw();
    if md.uid() != me {
        return refuse(format!(
            "is owned by uid {}, not by you (uid {me})",
            md.uid()
        ));
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & SHARED_WRITE != 0 {
        return refuse(format!(
            "has mode {mode:04o}, writable by group or others (chmod 700 makes it private)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_missing_folder_is_made_private() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a").join("sim");
        make_private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        make_private_dir(&d).unwrap();
        check_private_dir(&d).unwrap();
    }

    #[test]
    fn open_foreign_and_linked_folders_are_refused() {
        let t = tempfile::tempdir().unwrap();
        for m in [0o777, 0o1777, 0o775, 0o757, 0o720] {
            let d = t.path().join(format!("m{m:o}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m)).unwrap();
            let e = make_private_dir(&d).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{m:o}");
            assert!(e.to_string().contains(&format!("mode {m:04o}")), "{e}");
            assert!(e.to_string().contains("writable by group or others"), "{e}");
            assert_eq!(mode(&d) & 0o777, m & 0o777, "left as it was");
        }
        for m in [0o755, 0o750, 0o711] {
            let d = t.path().join(format!("ok{m:o}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m)).unwrap();
            make_private_dir(&d).unwrap();
            assert_eq!(mode(&d), m, "not changed");
        }
        let link = t.path().join("link");
        let target = t.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = make_private_dir(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let file = t.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(make_private_dir(&file)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }

    #[test]
    fn a_folder_owned_by_another_user_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("theirs");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        // Only root can give a folder away; elsewhere this part is moot.
        if std::os::unix::fs::chown(&d, Some(65534), None).is_err() {
            return;
        }
        let e = make_private_dir(&d).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    }
}
