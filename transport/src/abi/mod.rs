//! Typed views over the bytes of every shared format xenring speaks.
//!
//! Each format is a `View<T: AsRef<[u8]>>` in the style of smoltcp's wire
//! module: a private `field` module names the byte ranges, `new_checked`
//! verifies the length once, and the accessors then never panic. Views work on
//! private buffers: bytes are copied out of shared memory first (see
//! [`crate::shm`]), so a view never looks at memory the peer can change.
//!
//! Every layout is checked at compile time against a `#[repr(C)]` mirror of
//! Xen's C declaration (`offset_of!`/`size_of` asserts), and each file has
//! golden-byte tests.
//!
//! All integers are little-endian (x86_64 and arm64 Xen guests).

pub mod blkif;
pub mod blkif_ext;
pub mod grant;
pub mod netif;
pub mod ring;
pub mod vchan;
pub mod xenbus;
pub mod xs_wire;

use core::ops::Range;

/// A buffer was too short, or held a value the format does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbiError {
    /// The buffer is shorter than the format.
    #[error("{what}: buffer of {got} bytes is shorter than the {need} the format needs")]
    Truncated {
        /// The format.
        what: &'static str,
        /// Bytes required.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// A field holds a value outside the format's range.
    #[error("{what}: invalid value {value}")]
    BadValue {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
}

pub(crate) fn check_len(what: &'static str, buf: &[u8], need: usize) -> Result<(), AbiError> {
    if buf.len() < need {
        return Err(AbiError::Truncated {
            what,
            need,
            got: buf.len(),
        });
    }
    Ok(())
}

pub(crate) fn get_u8(b: &[u8], r: usize) -> u8 {
    b[r]
}
pub(crate) fn set_u8(b: &mut [u8], r: usize, v: u8) {
    b[r] = v
}
pub(crate) fn get_u16(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_le_bytes(b[r].try_into().expect("field is 2 bytes"))
}
pub(crate) fn get_u32(b: &[u8], r: Range<usize>) -> u32 {
    u32::from_le_bytes(b[r].try_into().expect("field is 4 bytes"))
}
pub(crate) fn get_u64(b: &[u8], r: Range<usize>) -> u64 {
    u64::from_le_bytes(b[r].try_into().expect("field is 8 bytes"))
}
pub(crate) fn get_i16(b: &[u8], r: Range<usize>) -> i16 {
    i16::from_le_bytes(b[r].try_into().expect("field is 2 bytes"))
}
pub(crate) fn set_u16(b: &mut [u8], r: Range<usize>, v: u16) {
    b[r].copy_from_slice(&v.to_le_bytes())
}
pub(crate) fn set_i16(b: &mut [u8], r: Range<usize>, v: i16) {
    b[r].copy_from_slice(&v.to_le_bytes())
}
pub(crate) fn set_u32(b: &mut [u8], r: Range<usize>, v: u32) {
    b[r].copy_from_slice(&v.to_le_bytes())
}
pub(crate) fn set_u64(b: &mut [u8], r: Range<usize>, v: u64) {
    b[r].copy_from_slice(&v.to_le_bytes())
}

/// Declares the standard constructor set of a view type: `new_unchecked`,
/// `new_checked` (length check against `SIZE`), `into_inner`, `as_bytes`.
macro_rules! view_common {
    ($name:ident, $what:literal, $size:expr) => {
        impl<T: AsRef<[u8]>> $name<T> {
            /// Size of the format in bytes.
            pub const SIZE: usize = $size;

            /// Wraps `buffer` without checking its length; accessors may then
            /// panic on a short buffer. Prefer [`Self::new_checked`].
            pub const fn new_unchecked(buffer: T) -> Self {
                $name { buffer }
            }

            /// Wraps `buffer` after checking it holds at least [`Self::SIZE`]
            /// bytes; accessors then never panic.
            pub fn new_checked(buffer: T) -> Result<Self, $crate::abi::AbiError> {
                $crate::abi::check_len($what, buffer.as_ref(), $size)?;
                Ok($name { buffer })
            }

            /// The wrapped buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            /// The format's bytes (the first [`Self::SIZE`] of the buffer).
            pub fn as_bytes(&self) -> &[u8] {
                &self.buffer.as_ref()[..$size]
            }
        }
    };
}
pub(crate) use view_common;
