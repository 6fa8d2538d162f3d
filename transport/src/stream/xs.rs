//! Where libxenvchan meets in XenStore: the server writes the control
//! page's grant reference and its event-channel port under
//! `/local/domain/<server>/data/vchan/<client>/<port>/`, as decimal
//! strings, in one transaction; the client reads both and refuses 0.

use std::fmt;

use super::StreamError;
use crate::abi::grant::{DomId, GrantRef};
use crate::platform::Port;

/// Key of the control page's grant reference.
pub const RING_REF_KEY: &str = "ring-ref";
/// Key of the server's event-channel port.
pub const EVENT_CHANNEL_KEY: &str = "event-channel";

/// Names one vchan: who serves it, who connects, and the service number
/// the two agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VchanAddress {
    /// Domain of the server (it owns the XenStore directory).
    pub server: DomId,
    /// Domain of the client.
    pub client: DomId,
    /// The service number ("port" in libxenvchan's users, not an event
    /// channel).
    pub port: u32,
}

impl VchanAddress {
    /// `/local/domain/<server>/data/vchan/<client>/<port>`.
    pub fn dir(&self) -> String {
        format!(
            "/local/domain/{}/data/vchan/{}/{}",
            self.server, self.client, self.port
        )
    }

    /// `<dir>/ring-ref`.
    pub fn ring_ref_path(&self) -> String {
        format!("{}/{RING_REF_KEY}", self.dir())
    }

    /// `<dir>/event-channel`.
    pub fn event_channel_path(&self) -> String {
        format!("{}/{EVENT_CHANNEL_KEY}", self.dir())
    }
}

impl fmt::Display for VchanAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dir())
    }
}

/// The value written for a grant reference or a port: plain decimal.
pub fn format_value(v: u32) -> String {
    v.to_string()
}

/// Parses a `ring-ref` value.
pub fn parse_ring_ref(value: &str) -> Result<GrantRef, StreamError> {
    parse(RING_REF_KEY, value)
}

/// Parses an `event-channel` value.
pub fn parse_event_channel(value: &str) -> Result<Port, StreamError> {
    parse(EVENT_CHANNEL_KEY, value)
}

/// Digits only (no sign, no spaces), fits in u32, and not 0: libxenvchan's
/// client refuses 0 for both keys. Stricter than its `atoi`, which would
/// read garbage as 0 or a prefix.
fn parse(key: &'static str, value: &str) -> Result<u32, StreamError> {
    let bad = || StreamError::BadXenstoreValue {
        key,
        value: value.chars().take(64).collect(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match value.parse::<u32>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_libxenvchan_users() {
        let a = VchanAddress {
            server: 0,
            client: 5,
            port: 1234,
        };
        assert_eq!(a.dir(), "/local/domain/0/data/vchan/5/1234");
        assert_eq!(
            a.ring_ref_path(),
            "/local/domain/0/data/vchan/5/1234/ring-ref"
        );
        assert_eq!(
            a.event_channel_path(),
            "/local/domain/0/data/vchan/5/1234/event-channel"
        );
        assert_eq!(a.to_string(), a.dir());
        let b = VchanAddress {
            server: 7,
            client: 0,
            port: 0,
        };
        assert_eq!(b.ring_ref_path(), "/local/domain/7/data/vchan/0/0/ring-ref");
    }

    #[test]
    fn values_are_decimal_and_non_zero() {
        assert_eq!(format_value(8), "8");
        assert_eq!(format_value(u32::MAX), "4294967295");
        assert_eq!(parse_ring_ref("8"), Ok(8));
        assert_eq!(parse_event_channel("4294967295"), Ok(u32::MAX));
        assert_eq!(parse_ring_ref("007"), Ok(7));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            " 1",
            "1\n",
            "0x10",
            "4294967296",
            "12a",
        ] {
            assert_eq!(
                parse_ring_ref(bad),
                Err(StreamError::BadXenstoreValue {
                    key: "ring-ref",
                    value: bad.into()
                }),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_event_channel("0").unwrap_err().to_string(),
            "vchan xenstore event-channel: \"0\" is not a non-zero decimal number"
        );
    }
}
