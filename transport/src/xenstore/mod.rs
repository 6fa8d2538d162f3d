//! XenStore: the xs_wire codec shared by server and client.
//!
//! * [`codec`]: messages, framing, payload conventions, the 4096-byte limit.
//! * [`XsClient`]: the hardened client, on an explicit socket path, over
//!   the project's own connection [`conn::XsConn`]; it implements
//!   xenstore-rs's `AsyncXs` and `AsyncWatch` traits.
//! * [`store`]: the embedded xenstored's store, sans-IO ([`Store`]).
//! * [`server`]: the embedded xenstored, one Unix socket per domain
//!   ([`Xenstored`]).
//! * [`xenbus_dev`]: XenStore in a guest, `/dev/xen/xenbus` relayed to a
//!   Unix socket for the client.

mod client;
pub mod codec;
pub mod conn;
mod error;
mod outq;
mod perm;
mod rs_traits;
pub mod server;
pub mod store;
mod txn;
mod watch;
pub mod xenbus_dev;

pub use client::{ClientOptions, XsClient, DEFAULT_XENSTORED_PATH, ENV_XENSTORED_PATH};
pub use codec::{CodecError, XsMsg};
pub use error::XsError;
pub use perm::{BadPerm, Perm, PermAccess};
pub use server::{Xenstored, XenstoredStats};
pub use store::{ConnId, Event, Outcome, Quotas, Store};
pub use txn::XsTxn;
pub use watch::XsWatch;
