//! XenStore node permissions as they travel on the wire: a list of
//! `<letter><domid>` entries (`n` none, `r` read, `w` write, `b` both). The
//! first entry names the node's owner and the access of every domain not
//! listed after it.

use std::fmt;
use std::str::FromStr;

/// Access a permission entry grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermAccess {
    /// `n`: nothing.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl PermAccess {
    /// The wire letter.
    pub fn letter(self) -> char {
        match self {
            PermAccess::None => 'n',
            PermAccess::Read => 'r',
            PermAccess::Write => 'w',
            PermAccess::Both => 'b',
        }
    }

    /// Whether reading is allowed.
    pub fn can_read(self) -> bool {
        matches!(self, PermAccess::Read | PermAccess::Both)
    }

    /// Whether writing is allowed.
    pub fn can_write(self) -> bool {
        matches!(self, PermAccess::Write | PermAccess::Both)
    }
}

/// One permission entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain (the owner, for the first entry).
    pub domid: u16,
    /// What it may do (for the first entry: what everyone unlisted may do).
    pub access: PermAccess,
}

impl Perm {
    /// `access` for `domid`.
    pub fn new(domid: u16, access: PermAccess) -> Perm {
        Perm { domid, access }
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// A permission entry that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad xenstore permission {0:?}: expected n, r, w or b followed by a domain id")]
pub struct BadPerm(pub String);

impl FromStr for Perm {
    type Err = BadPerm;
    fn from_str(s: &str) -> Result<Perm, BadPerm> {
        let bad = || BadPerm(s.to_string());
        let mut chars = s.chars();
        let access = match chars.next().ok_or_else(bad)? {
            'n' => PermAccess::None,
            'r' => PermAccess::Read,
            'w' => PermAccess::Write,
            'b' => PermAccess::Both,
            _ => return Err(bad()),
        };
        let rest = chars.as_str();
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let domid = rest.parse().map_err(|_| bad())?;
        Ok(Perm { domid, access })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perms_round_trip_and_reject_garbage() {
        for s in ["n0", "r5", "w12", "b65535"] {
            assert_eq!(s.parse::<Perm>().unwrap().to_string(), s);
        }
        assert_eq!(
            "r5".parse::<Perm>().unwrap(),
            Perm::new(5, PermAccess::Read)
        );
        for bad in ["", "x1", "r", "r-1", "r65536", "r1a", " r1"] {
            assert!(bad.parse::<Perm>().is_err(), "{bad:?}");
        }
        assert!(PermAccess::Both.can_read() && PermAccess::Both.can_write());
        assert!(!PermAccess::Read.can_write() && !PermAccess::Write.can_read());
    }
}
