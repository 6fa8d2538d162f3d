//! # xenring-backend
//!
//! The backend end of xenring's split devices: the [`BackendDevice`] trait
//! a device author implements, the daemon that runs devices (hot-plug,
//! handshake, peer death, restart, shutdown), and the built-in backends.
//!
//! | module | what it holds |
//! |---|---|
//! | [`device`] | [`BackendDevice`] and how the daemon drives it |
//! | [`chan`] | the `chan` backend: each channel to a Unix socket or TCP target |
//! | [`vbd`] | the `vbd` backend (blkback): a raw image file over blkif |
//! | [`vif`] | the `vif` network backend: the netif rings to a TAP device |
//! | [`cli`] | the `xenring-backend` daemon's command line |
#![deny(missing_docs)]

pub mod chan;
pub mod cli;
pub mod device;
pub mod vbd;
pub mod vif;

pub use device::{daemon, BackendDevice};
pub use xenring::xenbus::daemon::{Daemon, DaemonStats};
pub use xenring::xenbus::device::{BackendConn, DeviceError, DeviceInfo};
pub use xenring::xenbus::paths::DeviceId;
