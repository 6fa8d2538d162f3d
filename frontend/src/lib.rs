//! # xenring-frontend
//!
//! The frontend end of xenring's split devices: the [`FrontendDevice`]
//! trait a device author implements, the daemon that runs devices
//! (discovery, handshake, backend restarts, shutdown), and the built-in
//! frontends.
//!
//! | module | what it holds |
//! |---|---|
//! | [`device`] | [`FrontendDevice`] and how the daemon drives it |
//! | [`chan`] | the `chan` frontend: a Unix socket per device |
//! | [`vbd`] | the `vbd` frontend (blkfront): the disk exported over NBD |
//! | [`nbd`] | the NBD server (and a small client) the `vbd` frontend uses |
//! | [`vif`] | the `vif` network frontend: a TAP device over the netif rings |
//! | [`cli`] | the `xenring-frontend` daemon's command line |
#![deny(missing_docs)]

pub mod chan;
pub mod cli;
pub mod device;
pub mod nbd;
pub mod vbd;
pub mod vif;

pub use device::{daemon, FrontendDevice};
pub use xenring::xenbus::daemon::{Daemon, DaemonStats};
pub use xenring::xenbus::device::{DeviceError, DeviceInfo, FrontendConn, PendingStream};
pub use xenring::xenbus::paths::DeviceId;
