//! XenStore paths: validation and resolution of what a client sends.
//!
//! A path is absolute (`/local/domain/1/name`), relative (`name`, resolved
//! under the caller's home `/local/domain/<domid>`), or special (`@...`,
//! accepted only where the request allows it: watches and permissions).
//!
//! Rules (docs/misc/xenstore.txt; `canonicalize()` in C xenstored's core.c):
//! only `A-Za-z0-9-/_@`, no `//`, no trailing `/` except the root itself,
//! not empty. Length: the path, absolute or resolved, without a leading
//! `/local/domain/<domid>/` (any domid: C's `sscanf("/local/domain/%5u/")`),
//! may not exceed the caller's limit: [`XENSTORE_REL_PATH_MAX`] (2048)
//! for every domain, dom0 included, as C xenstored 4.17
//! (`is_valid_nodename()`) and oxenstored do, or a domU's smaller
//! `path-max` quota. So an absolute path of 2049 to 3072 bytes outside a
//! home is refused even from dom0 ([`XENSTORE_ABS_PATH_MAX`] is never
//! reached). Anything else is `EINVAL`, as in C xenstored.

use crate::abi::xs_wire::{XsErrno, XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX};

/// A path as the store uses it: absolute (or special), plus how many
/// leading bytes to strip to give it back to the client in the form it
/// used (relative paths stay relative in watch events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resolved {
    /// The absolute (or special) path.
    pub abs: String,
    /// Bytes of `abs` the client did not write (`/local/domain/N/`), 0 for
    /// an absolute or special path.
    pub prefix: usize,
}

/// The home of `domid`: where its relative paths resolve.
pub(super) fn home(domid: u16) -> String {
    format!("/local/domain/{domid}")
}

fn valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// The length of `abs` that counts against the path limit: without a
/// leading `/local/domain/<domid>/`, where `<domid>` is what C's `%5u`
/// takes (at most 5 characters: an optional `-`, then digits).
pub(super) fn counted_len(abs: &str) -> usize {
    let Some(rest) = abs.strip_prefix("/local/domain/") else {
        return abs.len();
    };
    let b = rest.as_bytes();
    let sign = usize::from(b.first() == Some(&b'-'));
    let digits = b[sign..]
        .iter()
        .take(5 - sign)
        .take_while(|c| c.is_ascii_digit())
        .count();
    match b.get(sign + digits) {
        Some(b'/') if digits > 0 => abs.len() - ("/local/domain/".len() + sign + digits + 1),
        _ => abs.len(),
    }
}

/// Validates `raw` (without its NUL) and resolves it for `domid`; the
/// counted length ([`counted_len`]) may not exceed `max_len`.
pub(super) fn resolve(
    domid: u16,
    raw: &[u8],
    allow_special: bool,
    max_len: usize,
) -> Result<Resolved, XsErrno> {
    if raw.is_empty() || !raw.iter().all(|b| valid_char(*b)) {
        return Err(XsErrno::Einval);
    }
    // Only ASCII is left, so this cannot fail.
    let s = std::str::from_utf8(raw).map_err(|_| XsErrno::Einval)?;
    let (abs, prefix) = match raw[0] {
        b'@' if !allow_special => return Err(XsErrno::Einval),
        b'/' | b'@' => {
            if s.len() > XENSTORE_ABS_PATH_MAX {
                return Err(XsErrno::Einval);
            }
            (s.to_string(), 0)
        }
        _ => {
            if s.len() > XENSTORE_REL_PATH_MAX {
                return Err(XsErrno::Einval);
            }
            let h = home(domid);
            let prefix = h.len() + 1;
            (format!("{h}/{s}"), prefix)
        }
    };
    if (abs.ends_with('/') && abs != "/") || abs.contains("//") || counted_len(&abs) > max_len {
        return Err(XsErrno::Einval);
    }
    Ok(Resolved { abs, prefix })
}

/// The parent of an absolute path (`/` for `/x` and for special paths, as
/// in C xenstored's `get_parent()`).
pub(super) fn parent(path: &str) -> &str {
    match path.get(1..).and_then(|rest| rest.rfind('/')) {
        Some(i) => &path[..i + 1],
        None => "/",
    }
}

/// The last component of an absolute path other than `/`.
pub(super) fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `parent`/`name`.
pub(super) fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `path` is `ancestor` or below it (`/` is above every absolute
/// path, never above a special one).
pub(super) fn is_below(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(ancestor) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A decimal domain id as XenStore payloads carry it (`parse_domid()`:
/// digits only, at most 65535).
pub(super) fn parse_domid(raw: &[u8]) -> Result<u16, XsErrno> {
    if raw.is_empty() || !raw.iter().all(u8::is_ascii_digit) {
        return Err(XsErrno::Einval);
    }
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(XsErrno::Einval)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: usize = XENSTORE_REL_PATH_MAX;

    fn resolve(domid: u16, raw: &[u8], special: bool) -> Result<Resolved, XsErrno> {
        super::resolve(domid, raw, special, M)
    }

    #[test]
    fn absolute_relative_and_special() {
        assert_eq!(
            resolve(3, b"/a/b", false).unwrap(),
            Resolved {
                abs: "/a/b".into(),
                prefix: 0
            }
        );
        let r = resolve(3, b"x/y", false).unwrap();
        assert_eq!(r.abs, "/local/domain/3/x/y");
        assert_eq!(&r.abs[r.prefix..], "x/y");
        assert_eq!(resolve(0, b"/", false).unwrap().abs, "/");
        assert_eq!(resolve(0, b"@releaseDomain", true).unwrap().prefix, 0);
        assert_eq!(resolve(0, b"@releaseDomain", false), Err(XsErrno::Einval));
    }

    #[test]
    fn bad_paths_are_einval() {
        for bad in [
            &b""[..],
            b"/a/",
            b"a/",
            b"//a",
            b"/a//b",
            b"/a b",
            b"/a\xff",
            b"/a.b",
            b"/a\0b",
        ] {
            assert_eq!(resolve(0, bad, true), Err(XsErrno::Einval), "{bad:?}");
        }
        let long_abs = format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX));
        assert_eq!(resolve(0, long_abs.as_bytes(), false), Err(XsErrno::Einval));
        let ok_abs = format!("/{}", "a".repeat(M - 1));
        assert!(resolve(0, ok_abs.as_bytes(), false).is_ok());
        let over = format!("/{}", "a".repeat(M));
        assert_eq!(resolve(0, over.as_bytes(), false), Err(XsErrno::Einval));
        let in_home = format!("/local/domain/12345/{}", "a".repeat(M));
        assert!(resolve(0, in_home.as_bytes(), false).is_ok());
        assert_eq!(
            super::resolve(1, b"abcdef", false, 5),
            Err(XsErrno::Einval),
            "a smaller limit"
        );
        let long_rel = "a".repeat(XENSTORE_REL_PATH_MAX + 1);
        assert_eq!(resolve(0, long_rel.as_bytes(), false), Err(XsErrno::Einval));
        assert!(resolve(0, &long_rel.as_bytes()[1..], false).is_ok());
    }

    #[test]
    fn counted_length_skips_what_percent_5u_takes() {
        assert_eq!(counted_len("/local/domain/1/ab"), 2);
        assert_eq!(counted_len("/local/domain/65535/ab"), 2);
        assert_eq!(counted_len("/local/domain/-1/ab"), 2);
        assert_eq!(counted_len("/local/domain/123456/ab"), 23, "6 digits");
        assert_eq!(counted_len("/local/domain/1"), 15, "no slash after");
        assert_eq!(counted_len("/local/domain/x/ab"), 18);
        assert_eq!(counted_len("/tool/x"), 7);
        assert_eq!(counted_len("@releaseDomain"), 14);
    }

    #[test]
    fn parents_and_ancestry() {
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("@releaseDomain"), "/");
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert!(is_below("/a/b", "/a"));
        assert!(is_below("/a", "/a"));
        assert!(!is_below("/ab", "/a"));
        assert!(is_below("/ab", "/"));
        assert!(!is_below("@releaseDomain", "/"));
    }

    #[test]
    fn domids() {
        assert_eq!(parse_domid(b"0"), Ok(0));
        assert_eq!(parse_domid(b"65535"), Ok(65535));
        for bad in [&b""[..], b"65536", b"-1", b"1a", b" 1"] {
            assert_eq!(parse_domid(bad), Err(XsErrno::Einval), "{bad:?}");
        }
    }
}
