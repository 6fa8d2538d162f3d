//! XenBus device states (Xen's `public/io/xenbus.h`, `enum xenbus_state`),
//! as numbers and in the decimal-string form they take in a device's
//! `state` node in XenStore.
//!
//! The typical handshake (either side may skip states; the other must cope):
//!
//! ```text
//!  frontend                              backend
//!  Initialising                          Initialising
//!                                        InitWait      (features published)
//!  Initialised   (ring-ref, event-channel written)
//!                                        Connected     (ring mapped)
//!  Connected
//!  ...
//!  Closing -> Closed                     Closing -> Closed
//! ```
//!
//! This module holds the values only; the state machine is in
//! `crate::xenbus`.

use super::AbiError;

/// A XenBus device state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum XenbusState {
    /// No state yet (the node is missing or unreadable).
    Unknown = 0,
    /// The device is being set up.
    Initialising = 1,
    /// Early setup is done; waiting for the peer or the hotplug scripts
    /// (a backend publishes its features, then enters this state).
    InitWait = 2,
    /// Ready, waiting for the peer to connect (a frontend has published
    /// its ring references and event channel).
    Initialised = 3,
    /// Connected: the ring is in use.
    Connected = 4,
    /// Being closed, after an error or an unplug.
    Closing = 5,
    /// Closed.
    Closed = 6,
    /// Being reconfigured.
    Reconfiguring = 7,
    /// Reconfiguration is done.
    Reconfigured = 8,
}

impl XenbusState {
    /// Every state, in numeric order.
    pub const ALL: [XenbusState; 9] = [
        XenbusState::Unknown,
        XenbusState::Initialising,
        XenbusState::InitWait,
        XenbusState::Initialised,
        XenbusState::Connected,
        XenbusState::Closing,
        XenbusState::Closed,
        XenbusState::Reconfiguring,
        XenbusState::Reconfigured,
    ];

    /// The state numbered `v`, if there is one.
    pub fn from_raw(v: u32) -> Option<XenbusState> {
        Self::ALL.get(usize::try_from(v).ok()?).copied()
    }

    /// The state's number.
    pub fn raw(self) -> u32 {
        self as u32
    }

    /// The C name without its `XenbusState` prefix, e.g. `"Connected"`.
    pub fn name(self) -> &'static str {
        match self {
            XenbusState::Unknown => "Unknown",
            XenbusState::Initialising => "Initialising",
            XenbusState::InitWait => "InitWait",
            XenbusState::Initialised => "Initialised",
            XenbusState::Connected => "Connected",
            XenbusState::Closing => "Closing",
            XenbusState::Closed => "Closed",
            XenbusState::Reconfiguring => "Reconfiguring",
            XenbusState::Reconfigured => "Reconfigured",
        }
    }
}

/// Parses the XenStore form of a state: one or more ASCII decimal digits and
/// nothing else (no sign, no whitespace, no NUL), naming a state 0..=8.
///
/// Anything else is refused with [`AbiError::BadValue`] whose `what` is
/// `"xenbus state"`; `value` is the number when the text is decimal (and
/// `u64::MAX` when it is too large for a u64), and `u64::MAX` when the text
/// is not a decimal number at all.
impl core::str::FromStr for XenbusState {
    type Err = AbiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |value| AbiError::BadValue {
            what: "xenbus state",
            value,
        };
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(u64::MAX));
        }
        let n = s.parse::<u64>().unwrap_or(u64::MAX);
        u32::try_from(n)
            .ok()
            .and_then(XenbusState::from_raw)
            .ok_or(bad(n))
    }
}

/// Formats the state as XenStore stores it: its number in decimal.
impl core::fmt::Display for XenbusState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.raw())
    }
}

/// Compile-time checks against Xen's declaration.
mod c {
    use core::mem::size_of;
    // `enum xenbus_state` is int-sized.
    const _: () = assert!(size_of::<super::XenbusState>() == 4);
    const _: () = assert!(super::XenbusState::Reconfigured as u32 == 8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_names_and_strings() {
        let expected = [
            (0, "Unknown"),
            (1, "Initialising"),
            (2, "InitWait"),
            (3, "Initialised"),
            (4, "Connected"),
            (5, "Closing"),
            (6, "Closed"),
            (7, "Reconfiguring"),
            (8, "Reconfigured"),
        ];
        for (s, (raw, name)) in XenbusState::ALL.iter().zip(expected) {
            assert_eq!(s.raw(), raw);
            assert_eq!(s.name(), name);
            assert_eq!(XenbusState::from_raw(raw), Some(*s));
            let text = s.to_string();
            assert_eq!(text, raw.to_string());
            assert_eq!(text.parse::<XenbusState>(), Ok(*s));
        }
        assert_eq!(XenbusState::from_raw(9), None);
        assert_eq!(XenbusState::from_raw(u32::MAX), None);
        assert_eq!("4".parse(), Ok(XenbusState::Connected));
        assert_eq!("04".parse(), Ok(XenbusState::Connected));
    }

    #[test]
    fn bad_strings_are_refused() {
        let err = |value| {
            Err::<XenbusState, _>(AbiError::BadValue {
                what: "xenbus state",
                value,
            })
        };
        assert_eq!("9".parse(), err(9));
        assert_eq!("4294967300".parse(), err(4_294_967_300));
        assert_eq!("99999999999999999999999".parse(), err(u64::MAX));
        for s in ["", "x", "-1", "+4", " 4", "4 ", "4\n", "4\0", "0x4", "٤"] {
            assert_eq!(s.parse(), err(u64::MAX), "{s:?}");
        }
        assert_eq!(
            "9".parse::<XenbusState>().unwrap_err().to_string(),
            "xenbus state: invalid value 9"
        );
    }
}
