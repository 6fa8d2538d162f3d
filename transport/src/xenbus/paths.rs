//! Where a device lives in XenStore.
//!
//! A split device is named by its kind (`vbd`, `vif`, `chan`, ...), its
//! frontend and backend domains and a device number, and has two
//! directories:
//!
//! ```text
//! frontend dir  /local/domain/<fe>/device/<kind>/<devid>        (nodename device/<kind>/<devid>)
//! backend dir   /local/domain/<be>/backend/<kind>/<fe>/<devid>  (nodename backend/<kind>/<fe>/<devid>)
//! error node    /local/domain/<writer>/error/<nodename>/error   (Linux's xenbus_dev_error)
//! ```
//!
//! Invariants: a [`DeviceId`] built by [`DeviceId::new`] or parsed here has
//! a kind of `[a-z0-9_-]+` (at most 64 bytes) and domain ids below
//! `DOMID_FIRST_RESERVED` (0x7ff0), so every path it builds is a valid
//! XenStore path.

use std::fmt;
use std::str::FromStr;

use super::XenbusError;
use crate::abi::grant::DomId;

/// The first reserved domain id (`DOMID_FIRST_RESERVED`, public/xen.h):
/// no real domain has this id or a larger one.
pub const DOMID_FIRST_RESERVED: DomId = 0x7ff0;

/// Longest device kind accepted.
const KIND_MAX: usize = 64;

/// Which end of a split device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The end in the guest, under `/local/domain/<fe>/device/`.
    Frontend,
    /// The end in the driver domain, under `/local/domain/<be>/backend/`.
    Backend,
}

impl Side {
    /// The other end.
    pub fn other(self) -> Side {
        match self {
            Side::Frontend => Side::Backend,
            Side::Backend => Side::Frontend,
        }
    }

    /// `"frontend"` or `"backend"`.
    pub fn name(self) -> &'static str {
        match self {
            Side::Frontend => "frontend",
            Side::Backend => "backend",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A split device: kind, frontend and backend domains, device number.
///
/// Ordered by kind, frontend, devid, then backend (the order of
/// [`Display`](fmt::Display), which omits the backend).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId {
    /// The device kind: `chan`, `vbd`, `vif`, ... (`[a-z0-9_-]+`).
    pub kind: String,
    /// The frontend (guest) domain.
    pub frontend: DomId,
    /// The backend (driver) domain.
    pub backend: DomId,
    /// The device number, unique per kind and frontend.
    pub devid: u32,
}

impl PartialOrd for DeviceId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DeviceId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.kind, self.frontend, self.devid, self.backend).cmp(&(
            &other.kind,
            other.frontend,
            other.devid,
            other.backend,
        ))
    }
}

fn bad(path: &str, why: impl Into<String>) -> XenbusError {
    XenbusError::BadPath {
        path: path.to_string(),
        why: why.into(),
    }
}

/// Checks a device kind: `[a-z0-9_-]+`, at most 64 bytes.
fn check_kind(whole: &str, kind: &str) -> Result<(), XenbusError> {
    if kind.is_empty() {
        return Err(bad(whole, "the device kind is empty"));
    }
    if kind.len() > KIND_MAX {
        return Err(bad(
            whole,
            format!("the device kind is longer than {KIND_MAX} bytes"),
        ));
    }
    if let Some(c) = kind
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
    {
        return Err(bad(
            whole,
            format!("the device kind {kind:?} has {c:?} (only a-z 0-9 _ - are allowed)"),
        ));
    }
    Ok(())
}

/// Parses a decimal number (digits only: no sign, no spaces).
fn number<T: FromStr>(whole: &str, what: &str, s: &str) -> Result<T, XenbusError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            whole,
            format!("the {what} {s:?} is not a decimal number"),
        ));
    }
    s.parse()
        .map_err(|_| bad(whole, format!("the {what} {s} is too large")))
}

fn domid(whole: &str, what: &str, s: &str) -> Result<DomId, XenbusError> {
    let d: DomId = number(whole, what, s)?;
    if d >= DOMID_FIRST_RESERVED {
        return Err(bad(
            whole,
            format!("the {what} {d} is a reserved domain id (0x7ff0 and above)"),
        ));
    }
    Ok(d)
}

/// The components of an absolute path under `/local/domain/<d>/`, after
/// checking the prefix.
fn domain_components<'a>(path: &'a str, what: &str) -> Result<Vec<&'a str>, XenbusError> {
    let rest = path.strip_prefix("/local/domain/").ok_or_else(|| {
        bad(
            path,
            format!("a {what} starts with /local/domain/ (an absolute path)"),
        )
    })?;
    Ok(rest.split('/').collect())
}

impl DeviceId {
    /// A device id, with its kind checked (`[a-z0-9_-]+`) and the domain
    /// ids checked to be below 0x7ff0.
    pub fn new(
        kind: impl Into<String>,
        frontend: DomId,
        backend: DomId,
        devid: u32,
    ) -> Result<DeviceId, XenbusError> {
        let kind = kind.into();
        let whole = format!("{kind}/{frontend}/{devid}");
        check_kind(&whole, &kind)?;
        for (what, d) in [("frontend domain", frontend), ("backend domain", backend)] {
            domid(&whole, what, &d.to_string())?;
        }
        Ok(DeviceId {
            kind,
            frontend,
            backend,
            devid,
        })
    }

    /// `/local/domain/<fe>/device/<kind>/<devid>`.
    pub fn frontend_dir(&self) -> String {
        format!(
            "/local/domain/{}/{}",
            self.frontend,
            self.frontend_nodename()
        )
    }

    /// `/local/domain/<be>/backend/<kind>/<fe>/<devid>`.
    pub fn backend_dir(&self) -> String {
        format!("/local/domain/{}/{}", self.backend, self.backend_nodename())
    }

    /// `device/<kind>/<devid>`: the frontend dir relative to the frontend
    /// domain's home.
    pub fn frontend_nodename(&self) -> String {
        format!("device/{}/{}", self.kind, self.devid)
    }

    /// `backend/<kind>/<fe>/<devid>`: the backend dir relative to the
    /// backend domain's home.
    pub fn backend_nodename(&self) -> String {
        format!("backend/{}/{}/{}", self.kind, self.frontend, self.devid)
    }

    /// The domain of `side`.
    pub fn domid(&self, side: Side) -> DomId {
        match side {
            Side::Frontend => self.frontend,
            Side::Backend => self.backend,
        }
    }

    /// The directory of `side`.
    pub fn dir(&self, side: Side) -> String {
        match side {
            Side::Frontend => self.frontend_dir(),
            Side::Backend => self.backend_dir(),
        }
    }

    /// The nodename of `side` (relative to that domain's home).
    pub fn nodename(&self, side: Side) -> String {
        match side {
            Side::Frontend => self.frontend_nodename(),
            Side::Backend => self.backend_nodename(),
        }
    }

    /// `/local/domain/<d>/error/<nodename>`, `d` being `side`'s domain: the
    /// directory holding that side's error node.
    pub fn error_dir(&self, side: Side) -> String {
        format!(
            "/local/domain/{}/error/{}",
            self.domid(side),
            self.nodename(side)
        )
    }

    /// `/local/domain/<d>/error/<nodename>/error`: where `side` reports an
    /// error, as Linux's `xenbus_dev_error` does (it writes
    /// `error/<nodename>/error` relative to the writer's home).
    pub fn error_path(&self, side: Side) -> String {
        format!("{}/error", self.error_dir(side))
    }

    /// Parses a backend directory,
    /// `/local/domain/<be>/backend/<kind>/<fe>/<devid>`.
    pub fn from_backend_dir(path: &str) -> Result<DeviceId, XenbusError> {
        let parts = domain_components(path, "backend directory")?;
        match parts.as_slice() {
            [be, "backend", kind, fe, devid] => {
                check_kind(path, kind)?;
                Ok(DeviceId {
                    kind: kind.to_string(),
                    frontend: domid(path, "frontend domain", fe)?,
                    backend: domid(path, "backend domain", be)?,
                    devid: number(path, "device number", devid)?,
                })
            }
            _ => Err(bad(
                path,
                "expected /local/domain/<backend>/backend/<kind>/<frontend>/<devid>",
            )),
        }
    }

    /// Parses a frontend directory, `/local/domain/<fe>/device/<kind>/<devid>`.
    /// The path does not say which domain is the backend: pass it (the
    /// frontend dir's `backend-id` node holds it).
    pub fn from_frontend_dir(path: &str, backend: DomId) -> Result<DeviceId, XenbusError> {
        let parts = domain_components(path, "frontend directory")?;
        match parts.as_slice() {
            [fe, "device", kind, devid] => {
                check_kind(path, kind)?;
                Ok(DeviceId {
                    kind: kind.to_string(),
                    frontend: domid(path, "frontend domain", fe)?,
                    backend: domid(path, "backend domain", &backend.to_string())?,
                    devid: number(path, "device number", devid)?,
                })
            }
            _ => Err(bad(
                path,
                "expected /local/domain/<frontend>/device/<kind>/<devid>",
            )),
        }
    }

    /// Parses the short form `<kind>/<frontend>/<devid>` (what `Display`
    /// prints) with `backend` as the backend domain.
    pub fn parse_with_backend(s: &str, backend: DomId) -> Result<DeviceId, XenbusError> {
        match s.split('/').collect::<Vec<_>>().as_slice() {
            [kind, fe, devid] => {
                check_kind(s, kind)?;
                Ok(DeviceId {
                    kind: kind.to_string(),
                    frontend: domid(s, "frontend domain", fe)?,
                    backend: domid(s, "backend domain", &backend.to_string())?,
                    devid: number(s, "device number", devid)?,
                })
            }
            _ => Err(bad(s, "expected <kind>/<frontend>/<devid>, e.g. chan/1/0")),
        }
    }
}

/// `<kind>/<frontend>/<devid>`, e.g. `chan/1/0` (the backend is not shown).
impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.frontend, self.devid)
    }
}

/// Parses `<kind>/<frontend>/<devid>` with dom0 as the backend; see
/// [`DeviceId::parse_with_backend`] for another backend.
impl FromStr for DeviceId {
    type Err = XenbusError;
    fn from_str(s: &str) -> Result<DeviceId, XenbusError> {
        DeviceId::parse_with_backend(s, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chan(fe: DomId, be: DomId, devid: u32) -> DeviceId {
        DeviceId::new("chan", fe, be, devid).unwrap()
    }

    #[test]
    fn paths_are_built_as_linux_and_xl_do() {
        let id = chan(1, 0, 3);
        assert_eq!(id.frontend_dir(), "/local/domain/1/device/chan/3");
        assert_eq!(id.backend_dir(), "/local/domain/0/backend/chan/1/3");
        assert_eq!(id.frontend_nodename(), "device/chan/3");
        assert_eq!(id.backend_nodename(), "backend/chan/1/3");
        assert_eq!(
            id.error_path(Side::Frontend),
            "/local/domain/1/error/device/chan/3/error"
        );
        assert_eq!(
            id.error_path(Side::Backend),
            "/local/domain/0/error/backend/chan/1/3/error"
        );
        assert_eq!(
            id.error_dir(Side::Backend),
            "/local/domain/0/error/backend/chan/1/3"
        );
        assert_eq!(id.dir(Side::Frontend), id.frontend_dir());
        assert_eq!(id.dir(Side::Backend), id.backend_dir());
        assert_eq!((id.domid(Side::Frontend), id.domid(Side::Backend)), (1, 0));
        assert_eq!(id.to_string(), "chan/1/3");
        assert_eq!(Side::Frontend.other(), Side::Backend);
        assert_eq!(Side::Backend.to_string(), "backend");
        // A driver domain as backend.
        let vif = DeviceId::new("vif", 7, 2, 0).unwrap();
        assert_eq!(vif.backend_dir(), "/local/domain/2/backend/vif/7/0");
        assert_eq!(
            vif.error_path(Side::Backend),
            "/local/domain/2/error/backend/vif/7/0/error"
        );
        for p in [
            id.frontend_dir(),
            id.backend_dir(),
            id.error_path(Side::Backend),
        ] {
            assert!(
                p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_')),
                "{p}"
            );
        }
    }

    #[test]
    fn good_paths_parse_and_round_trip() {
        let id = chan(1, 0, 3);
        assert_eq!(DeviceId::from_backend_dir(&id.backend_dir()).unwrap(), id);
        assert_eq!(
            DeviceId::from_frontend_dir(&id.frontend_dir(), 0).unwrap(),
            id
        );
        assert_eq!("chan/1/3".parse::<DeviceId>().unwrap(), id);
        assert_eq!(
            DeviceId::parse_with_backend("vbd-x_2/32751/4294967295", 5).unwrap(),
            DeviceId::new("vbd-x_2", 32751, 5, u32::MAX).unwrap()
        );
        let big = DeviceId::from_backend_dir("/local/domain/4/backend/vif/9/12").unwrap();
        assert_eq!(big, DeviceId::new("vif", 9, 4, 12).unwrap());
    }

    #[test]
    fn bad_paths_say_what_is_wrong() {
        let cases: &[(Result<DeviceId, XenbusError>, &str)] = &[
            ("nonsense".parse(), "expected <kind>/<frontend>/<devid>"),
            ("chan/1".parse(), "expected <kind>/<frontend>/<devid>"),
            ("chan/1/0/9".parse(), "expected"),
            ("Chan/1/0".parse(), "has 'C'"),
            ("ch an/1/0".parse(), "has ' '"),
            ("/1/0".parse(), "kind is empty"),
            (
                "chan/x/0".parse(),
                "frontend domain \"x\" is not a decimal number",
            ),
            ("chan/-1/0".parse(), "not a decimal number"),
            (
                "chan/1/+0".parse(),
                "device number \"+0\" is not a decimal number",
            ),
            ("chan/65536/0".parse(), "frontend domain 65536 is too large"),
            ("chan/32752/0".parse(), "reserved domain id"),
            ("chan/1/4294967296".parse(), "too large"),
            (
                DeviceId::parse_with_backend("chan/1/0", 0x7ff1),
                "backend domain 32753 is a reserved",
            ),
            (
                DeviceId::from_backend_dir("local/domain/0/backend/chan/1/0"),
                "starts with /local/domain/",
            ),
            (
                DeviceId::from_backend_dir("/local/domain/0/device/chan/1/0"),
                "expected /local/domain/<backend>/backend/",
            ),
            (
                DeviceId::from_backend_dir("/local/domain/0/backend/chan/1"),
                "expected",
            ),
            (
                DeviceId::from_backend_dir("/local/domain/0/backend/chan/1/0/"),
                "expected",
            ),
            (
                DeviceId::from_backend_dir("/local/domain/zero/backend/chan/1/0"),
                "backend domain \"zero\"",
            ),
            (
                DeviceId::from_frontend_dir("/local/domain/1/device/chan", 0),
                "expected /local/domain/<frontend>/device/<kind>/<devid>",
            ),
            (
                DeviceId::from_frontend_dir("/local/domain/1/device/CHAN/0", 0),
                "has 'C'",
            ),
            (DeviceId::new("", 1, 0, 0), "kind is empty"),
            (DeviceId::new("a".repeat(65), 1, 0, 0), "longer than 64"),
            (DeviceId::new("chan", 1, 0x7ff0, 0), "reserved"),
        ];
        for (r, want) in cases {
            let e = r.as_ref().unwrap_err();
            assert!(matches!(e, XenbusError::BadPath { .. }), "{e}");
            assert!(e.to_string().contains(want), "{e} lacks {want:?}");
            assert!(e.to_string().starts_with("bad device path "), "{e}");
        }
    }

    #[test]
    fn ids_sort_by_kind_frontend_devid() {
        let mut v = vec![chan(2, 0, 0), chan(1, 0, 10), chan(1, 0, 2), chan(1, 3, 2)];
        v.push(DeviceId::new("abc", 9, 0, 0).unwrap());
        v.sort();
        let shown: Vec<String> = v.iter().map(|d| format!("{d}@{}", d.backend)).collect();
        assert_eq!(
            shown,
            [
                "abc/9/0@0",
                "chan/1/2@0",
                "chan/1/2@3",
                "chan/1/10@0",
                "chan/2/0@0"
            ]
        );
    }
}
