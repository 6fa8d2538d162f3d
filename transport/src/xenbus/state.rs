//! Async helpers over [`XsClient`] for one device directory: its `state`
//! node, the keys each side publishes, error nodes.
//!
//! Invariants:
//! * nothing here recreates a removed device: every write first checks,
//!   in the same transaction, that the device directory still exists, and
//!   answers [`XenbusError::Removed`] if not;
//! * a missing `state` node (or one holding the empty string, as a node
//!   made by mkdir does) reads as [`XenbusState::Unknown`]; anything else
//!   that is not a state is [`XenbusError::BadState`];
//! * the peer's values are hostile: they are parsed, never trusted, and an
//!   error quotes at most 64 characters of them.

use std::collections::BTreeMap;

use futures::StreamExt;

use super::error::excerpt;
use super::paths::{DeviceId, Side};
use super::XenbusError;
use crate::abi::grant::{DomId, GrantRef};
use crate::abi::xenbus::XenbusState;
use crate::abi::xs_wire::XENSTORE_PAYLOAD_MAX;
use crate::platform::Port;
use crate::xenstore::{XsClient, XsWatch};

/// The `state` node of `dir`.
fn state_path(dir: &str) -> String {
    format!("{dir}/state")
}

/// Parses the value of a `state` node at `path`.
fn parse_state(path: &str, value: Option<&str>) -> Result<XenbusState, XenbusError> {
    let Some(v) = value else {
        return Ok(XenbusState::Unknown);
    };
    // Linux reads the node with scanf("%d"): tolerate a trailing NUL or
    // newline, nothing more.
    let t = v.trim_end_matches('\0').trim_end_matches('\n');
    if t.is_empty() {
        return Ok(XenbusState::Unknown);
    }
    t.parse().map_err(|_| XenbusError::BadState {
        path: path.to_string(),
        value: excerpt(v),
    })
}

/// Reads the state of the device whose directory is `dir` (the `state`
/// node in it). A missing node or directory is
/// [`XenbusState::Unknown`]; a value that is not a state is
/// [`XenbusError::BadState`].
///
/// Cancellation safe (it only reads).
pub async fn read_state(xs: &XsClient, dir: &str) -> Result<XenbusState, XenbusError> {
    let path = state_path(dir);
    let v = xs
        .read_opt(&path)
        .await
        .map_err(XenbusError::xs("read-state", dir))?;
    parse_state(&path, v.as_deref())
}

/// Switches our side of the device in `dir` to `new`, in one transaction:
/// if `dir` no longer exists the answer is [`XenbusError::Removed`] and
/// nothing is written (a removed device is never recreated); if the state
/// is `new` already nothing is written; otherwise `state` is written.
/// Being one transaction, a racing writer (the peer, the toolstack) cannot
/// slip between the check and the write.
///
/// Cancellation safe: the transaction commits entirely or not at all; if
/// the future is dropped the state is either `new` or unchanged.
pub async fn switch_state(xs: &XsClient, dir: &str, new: XenbusState) -> Result<(), XenbusError> {
    // The transaction's body owns what it uses: a body borrowing the
    // caller's arguments would make the returned future not `Send`.
    let path = state_path(dir);
    let d = dir.to_string();
    let r = xs
        .transaction(async move |t| {
            if t.read_opt(&d).await?.is_none() {
                return Ok(Err(XenbusError::Removed { dir: d.clone() }));
            }
            let cur = t.read_opt(&path).await?;
            if parse_state(&path, cur.as_deref()).ok() != Some(new) {
                t.write(&path, &new.to_string()).await?;
            }
            Ok(Ok(()))
        })
        .await
        .map_err(XenbusError::xs("switch-state", dir))?;
    if r.is_ok() {
        tracing::debug!(dir, state = new.name(), "xenbus state switched");
    }
    r
}

/// The other end's state, as it changes. Made by [`watch_state`].
///
/// [`StateWatch::next`] yields the state each time the watch fires and
/// the value read differs from the last one yielded; the first call yields
/// the current state. The watch is set again by the client after a
/// XenStore restart (and the state re-read), so a change made while the
/// connection was down is not missed.
#[derive(Debug)]
pub struct StateWatch {
    xs: XsClient,
    dir: String,
    watch: XsWatch,
    last: Option<XenbusState>,
    /// An event came (or nothing has been read yet) and no read has
    /// completed since: the next `next` reads before waiting.
    dirty: bool,
}

impl StateWatch {
    /// The device directory watched.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// The state last yielded by [`StateWatch::next`]
    /// ([`XenbusState::Unknown`] before the first).
    pub fn current(&self) -> XenbusState {
        self.last.unwrap_or(XenbusState::Unknown)
    }

    /// Waits until the state differs from the one last yielded (at once on
    /// the first call) and returns it; [`XenbusState::Unknown`] when the
    /// node or the directory is gone. A value that is not a state is
    /// [`XenbusError::BadState`] (once per change of the node).
    ///
    /// Cancellation safe: a dropped call loses no change (a change already
    /// noticed is read again by the next call).
    pub async fn next(&mut self) -> Result<XenbusState, XenbusError> {
        loop {
            if !self.dirty {
                if self.watch.next().await.is_none() {
                    return Err(XenbusError::WatchEnded {
                        path: state_path(&self.dir),
                    });
                }
                self.dirty = true;
            }
            let read = read_state(&self.xs, &self.dir).await;
            match read {
                Ok(s) => {
                    self.dirty = false;
                    if self.last != Some(s) {
                        self.last = Some(s);
                        return Ok(s);
                    }
                }
                // A bad value is reported once; it is read again when the
                // node changes.
                Err(e @ XenbusError::BadState { .. }) => {
                    self.dirty = false;
                    return Err(e);
                }
                // XenStore trouble: read again on the next call.
                Err(e) => return Err(e),
            }
        }
    }
}

/// Watches the `state` node of the device in `dir` (normally the other
/// end's directory); see [`StateWatch`].
///
/// Cancellation safe (dropping the future or the watch removes the watch).
pub async fn watch_state(xs: &XsClient, dir: &str) -> Result<StateWatch, XenbusError> {
    let watch = xs
        .watch(&state_path(dir))
        .await
        .map_err(XenbusError::xs("watch-state", dir))?;
    Ok(StateWatch {
        xs: xs.clone(),
        dir: dir.to_string(),
        watch,
        last: None,
        dirty: true,
    })
}

/// Waits, through a watch (nothing is polled), until the state of the
/// device in `dir` satisfies `pred`, and returns it. A missing node is
/// [`XenbusState::Unknown`]. Bound it with `tokio::time::timeout` if
/// needed.
///
/// Cancellation safe.
pub async fn wait_for_state(
    xs: &XsClient,
    dir: &str,
    mut pred: impl FnMut(XenbusState) -> bool,
) -> Result<XenbusState, XenbusError> {
    let mut w = watch_state(xs, dir).await?;
    loop {
        let s = w.next().await?;
        if pred(s) {
            return Ok(s);
        }
    }
}

/// Writes every `(key, value)` under `dir` in one transaction: the peer
/// sees all of them or none. [`XenbusError::Removed`] (and nothing written)
/// if `dir` is gone. Keys are relative to `dir` and may have several
/// components (`queue-0/ring-ref`).
///
/// Cancellation safe: all or nothing is written.
pub async fn publish(
    xs: &XsClient,
    dir: &str,
    keys: &[(String, String)],
) -> Result<(), XenbusError> {
    // The transaction's body owns what it uses: a body borrowing the
    // caller's arguments would make the returned future not `Send`.
    let paths: Vec<(String, String)> = keys
        .iter()
        .map(|(k, v)| (format!("{dir}/{k}"), v.clone()))
        .collect();
    let d = dir.to_string();
    xs.transaction(async move |t| {
        if t.read_opt(&d).await?.is_none() {
            return Ok(Err(XenbusError::Removed { dir: d.clone() }));
        }
        for (p, v) in &paths {
            t.write(p, v).await?;
        }
        Ok(Ok(()))
    })
    .await
    .map_err(XenbusError::xs("publish", dir))?
}

/// Every direct child of `dir` and its value (a child that is only a
/// directory has the value `""`), and the children of such an empty child
/// as `child/grandchild` (one level: the per-queue keys `queue-N/ring-ref`
/// of multi-queue devices), read in one transaction so that the set is
/// consistent. [`XenbusError::Removed`] if `dir` is gone.
///
/// Cancellation safe (it only reads).
pub async fn read_keys(xs: &XsClient, dir: &str) -> Result<BTreeMap<String, String>, XenbusError> {
    let d = dir.to_string();
    xs.transaction(async move |t| {
        let kids = match t.directory(&d).await {
            Ok(k) => k,
            Err(e) if e.is_not_found() => return Ok(Err(XenbusError::Removed { dir: d.clone() })),
            Err(e) => return Err(e),
        };
        let mut map = BTreeMap::new();
        for k in kids {
            let v = t.read(&format!("{d}/{k}")).await?;
            if v.is_empty() {
                let sub = format!("{d}/{k}");
                for g in t.directory(&sub).await? {
                    let gv = t.read(&format!("{sub}/{g}")).await?;
                    map.insert(format!("{k}/{g}"), gv);
                }
            }
            map.insert(k, v);
        }
        Ok(Ok(map))
    })
    .await
    .map_err(XenbusError::xs("read-keys", dir))?
}

/// Longest error message written, in bytes: a domU's node (value,
/// permissions and header) must fit XenStore's default node-size quota of
/// 2048 bytes, and a message is for people.
pub const ERROR_MAX: usize = 1024;

/// Writes `msg` to `side`'s error node of device `id`
/// ([`DeviceId::error_path`]), creating its parents, as Linux's
/// `xenbus_dev_error` does; the caller then switches its side to
/// Closing. A message longer than [`ERROR_MAX`] bytes is cut (at a
/// character boundary). `xs` must speak for `side`'s domain (or dom0).
///
/// Cancellation safe (one write).
pub async fn write_error(
    xs: &XsClient,
    id: &DeviceId,
    side: Side,
    msg: &str,
) -> Result<(), XenbusError> {
    let path = id.error_path(side);
    let room = XENSTORE_PAYLOAD_MAX.saturating_sub(path.len() + 1);
    let mut end = msg.len().min(room).min(ERROR_MAX);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    tracing::warn!(device = %id, %side, error = msg, "xenbus device error");
    xs.write(&path, &msg[..end])
        .await
        .map_err(XenbusError::xs("write-error", &path))
}

/// Reads `side`'s error message of device `id`, if there is one.
///
/// Cancellation safe (it only reads).
pub async fn read_error(
    xs: &XsClient,
    id: &DeviceId,
    side: Side,
) -> Result<Option<String>, XenbusError> {
    let path = id.error_path(side);
    xs.read_opt(&path)
        .await
        .map_err(XenbusError::xs("read-error", &path))
}

/// Removes `side`'s error node of device `id` (its whole
/// `error/<nodename>` directory); nothing to remove is fine.
///
/// Cancellation safe (one removal).
pub async fn clear_error(xs: &XsClient, id: &DeviceId, side: Side) -> Result<(), XenbusError> {
    let dir = id.error_dir(side);
    match xs.rm(&dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(XenbusError::xs("clear-error", &dir)(e)),
    }
}

/// Parses a decimal number (surrounding whitespace and a trailing NUL
/// allowed, nothing else).
fn parse_decimal(v: &str) -> Result<u32, String> {
    let t = v.trim_end_matches('\0').trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a decimal number".into());
    }
    t.parse().map_err(|_| "larger than 4294967295".to_string())
}

fn key_value<'a>(
    map: &'a BTreeMap<String, String>,
    dir: &str,
    key: &str,
) -> Result<&'a str, XenbusError> {
    map.get(key)
        .map(String::as_str)
        .ok_or_else(|| XenbusError::BadKey {
            path: dir.to_string(),
            key: key.to_string(),
            value: None,
            why: "the peer did not write it".into(),
        })
}

fn bad_key(dir: &str, key: &str, value: &str, why: String) -> XenbusError {
    XenbusError::BadKey {
        path: dir.to_string(),
        key: key.to_string(),
        value: Some(excerpt(value)),
        why,
    }
}

/// The decimal `u32` in `map[key]` (a map from [`read_keys`] of `dir`).
/// A missing or unparsable key is [`XenbusError::BadKey`] with the
/// offending value.
pub fn parse_u32_key(
    map: &BTreeMap<String, String>,
    dir: &str,
    key: &str,
) -> Result<u32, XenbusError> {
    let v = key_value(map, dir, key)?;
    parse_decimal(v).map_err(|why| bad_key(dir, key, v, why))
}

/// An event channel port in `map[key]` (`event-channel`): a decimal
/// number, not 0 (port 0 is never bound).
pub fn parse_port_key(
    map: &BTreeMap<String, String>,
    dir: &str,
    key: &str,
) -> Result<Port, XenbusError> {
    let v = key_value(map, dir, key)?;
    match parse_decimal(v) {
        Ok(0) => Err(bad_key(
            dir,
            key,
            v,
            "port 0 is never a bound event channel".into(),
        )),
        Ok(p) => Ok(p),
        Err(why) => Err(bad_key(dir, key, v, why)),
    }
}

/// A grant reference in `map[key]` (`ring-ref`, `ring-ref0`, ...): a
/// decimal `u32`.
pub fn parse_grant_ref_key(
    map: &BTreeMap<String, String>,
    dir: &str,
    key: &str,
) -> Result<GrantRef, XenbusError> {
    parse_u32_key(map, dir, key)
}

/// A domain id in `map[key]` (`frontend-id`, `backend-id`): a decimal
/// number below 0x7ff0.
pub fn parse_domid_key(
    map: &BTreeMap<String, String>,
    dir: &str,
    key: &str,
) -> Result<DomId, XenbusError> {
    let v = key_value(map, dir, key)?;
    match parse_decimal(v) {
        Ok(d) if d < u32::from(super::paths::DOMID_FIRST_RESERVED) => Ok(d as DomId),
        Ok(d) => Err(bad_key(
            dir,
            key,
            v,
            format!("{d} is not a domain id (0x7ff0 and above are reserved)"),
        )),
        Err(why) => Err(bad_key(dir, key, v, why)),
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn states_parse_like_linux_reads_them() {
        let p = "/d/state";
        assert_eq!(parse_state(p, None).unwrap(), XenbusState::Unknown);
        assert_eq!(parse_state(p, Some("")).unwrap(), XenbusState::Unknown);
        assert_eq!(parse_state(p, Some("4")).unwrap(), XenbusState::Connected);
        assert_eq!(parse_state(p, Some("6\0")).unwrap(), XenbusState::Closed);
        assert_eq!(parse_state(p, Some("2\n")).unwrap(), XenbusState::InitWait);
        for bad in ["9", "x", "-1", " 4", "4 5", "connected"] {
            let e = parse_state(p, Some(bad)).unwrap_err();
            assert!(
                matches!(&e, XenbusError::BadState { path, value } if path == p && value == bad),
                "{e}"
            );
        }
        let e = parse_state(p, Some(&"7".repeat(500))).unwrap_err();
        assert!(matches!(&e, XenbusError::BadState { value, .. } if value.len() == 64));
        assert_eq!(
            parse_state(p, Some("x")).unwrap_err().to_string(),
            "bad xenbus state \"x\" in /d/state (expected a number from 0 to 8)"
        );
    }

    #[test]
    fn typed_key_getters_name_the_key_and_value() {
        let m = map(&[
            ("ring-ref", "8"),
            ("event-channel", "17\0"),
            ("zero", "0"),
            ("junk", "12abc"),
            ("huge", "4294967296"),
            ("frontend-id", "1"),
            ("bad-id", "32752"),
        ]);
        let d = "/local/domain/0/backend/chan/1/0";
        assert_eq!(parse_grant_ref_key(&m, d, "ring-ref").unwrap(), 8);
        assert_eq!(parse_port_key(&m, d, "event-channel").unwrap(), 17);
        assert_eq!(parse_u32_key(&m, d, "zero").unwrap(), 0);
        assert_eq!(parse_domid_key(&m, d, "frontend-id").unwrap(), 1);
        let e = parse_grant_ref_key(&m, d, "ring-ref0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "device key /local/domain/0/backend/chan/1/0/ring-ref0 is missing: the peer did not write it"
        );
        let e = parse_u32_key(&m, d, "junk").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("device key {d}/junk = \"12abc\": not a decimal number")
        );
        assert!(matches!(&e, XenbusError::BadKey { value: Some(v), .. } if v == "12abc"));
        let e = parse_u32_key(&m, d, "huge").unwrap_err();
        assert!(e.to_string().contains("larger than 4294967295"), "{e}");
        let e = parse_port_key(&m, d, "zero").unwrap_err();
        assert!(e.to_string().contains("port 0 is never"), "{e}");
        let e = parse_domid_key(&m, d, "bad-id").unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
    }
}
