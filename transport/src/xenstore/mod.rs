//! XenStore: the xs_wire codec shared by server and client.
//!
//! * [`codec`]: messages, framing, payload conventions, the 4096-byte limit.

pub mod codec;

pub use codec::{CodecError, XsMsg};
