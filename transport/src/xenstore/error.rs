//! The client's error type, and the checks made before anything is sent.

use std::path::PathBuf;
use std::time::Duration;

use super::codec::{XsErrno, XENSTORE_PAYLOAD_MAX};
use crate::abi::xs_wire::{XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX};

/// A XenStore client error. Every variant names the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum XsError {
    /// No server at the socket.
    #[error("no XenStore at {}: {source}; is the sim host running?", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why the connection failed.
        #[source]
        source: std::io::Error,
    },
    /// The server answered with an error.
    #[error("xenstore {op} {path}: {}", errno.as_str())]
    Server {
        /// The operation.
        op: &'static str,
        /// The path (or argument).
        path: String,
        /// The error the server named.
        errno: XsErrno,
    },
    /// No answer in time.
    #[error("xenstore {op} {path}: no reply within {timeout:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The path.
        path: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// Refused before sending: the request would break a protocol limit.
    #[error("xenstore {op} {path:?}: {why}")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// The path as given.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The connection failed and could not be re-established in time.
    #[error("xenstore {op} {path}: connection lost: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A transaction kept conflicting.
    #[error("xenstore transaction still conflicting (EAGAIN) after {attempts} attempts")]
    Conflict {
        /// Attempts made.
        attempts: u32,
    },
}

impl XsError {
    /// The server's error name, if the server answered with one.
    pub fn errno(&self) -> Option<XsErrno> {
        match self {
            XsError::Server { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// True if the node does not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(XsErrno::Enoent)
    }
}

/// Turns "no such node" into `None`.
pub(crate) fn absent_as_none<T>(r: Result<T, XsError>) -> Result<Option<T>, XsError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Checks a path as the server would, so that a bad one is refused here with
/// a message instead of costing a round trip (or, for an oversized payload,
/// hanging xenstore-rs's connection).
pub(crate) fn check_path(op: &'static str, path: &str) -> Result<(), XsError> {
    let bad = |why: String| XsError::Invalid {
        op,
        path: path.to_string(),
        why,
    };
    if path.is_empty() {
        return Err(bad("empty path".into()));
    }
    if path.starts_with('@') {
        if path.contains('/') {
            return Err(bad("a special path (@...) has no '/'".into()));
        }
    } else {
        let (max, kind) = if path.starts_with('/') {
            (XENSTORE_ABS_PATH_MAX, "absolute")
        } else {
            (XENSTORE_REL_PATH_MAX, "relative")
        };
        if path.len() > max {
            return Err(bad(format!(
                "{kind} path of {} bytes exceeds {max}",
                path.len()
            )));
        }
        if path.contains("//") || (path.len() > 1 && path.ends_with('/')) {
            return Err(bad("empty path component".into()));
        }
    }
    if let Some(c) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '@')))
    {
        return Err(bad(format!(
            "character {c:?} is not allowed (only A-Z a-z 0-9 - / _ @)"
        )));
    }
    Ok(())
}

/// Checks that a payload of `len` bytes fits.
pub(crate) fn check_payload(op: &'static str, path: &str, len: usize) -> Result<(), XsError> {
    if len > XENSTORE_PAYLOAD_MAX {
        return Err(XsError::Invalid {
            op,
            path: path.to_string(),
            why: format!(
                "request payload of {len} bytes exceeds the {XENSTORE_PAYLOAD_MAX}-byte limit"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_before_sending() {
        for ok in [
            "/",
            "/local/domain/1",
            "device/vif/0/state",
            "@releaseDomain",
            "a_b-c@d",
        ] {
            check_path("read", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("", "empty"),
            ("/a//b", "empty path component"),
            ("/a/", "empty path component"),
            ("/a b", "' '"),
            ("/a\u{e9}", "not allowed"),
            ("@x/y", "special"),
        ] {
            let e = check_path("read", bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long = format!("/{}", "a".repeat(3072));
        assert!(check_path("write", &long)
            .unwrap_err()
            .to_string()
            .contains("exceeds 3072"));
        let rel = "a".repeat(2049);
        assert!(check_path("write", &rel)
            .unwrap_err()
            .to_string()
            .contains("exceeds 2048"));
        assert!(check_payload("write", "/x", 4097)
            .unwrap_err()
            .to_string()
            .contains("4096-byte limit"));
        check_payload("write", "/x", 4096).unwrap();
    }

    #[test]
    fn messages_name_the_path() {
        let e = XsError::Server {
            op: "read",
            path: "/local/domain/1/x".into(),
            errno: XsErrno::Enoent,
        };
        assert_eq!(e.to_string(), "xenstore read /local/domain/1/x: ENOENT");
        assert!(e.is_not_found());
        let c = XsError::Connect {
            path: "/run/x.sock".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert!(
            c.to_string().starts_with("no XenStore at /run/x.sock: "),
            "{c}"
        );
        assert!(c.to_string().ends_with("is the sim host running?"), "{c}");
    }
}
