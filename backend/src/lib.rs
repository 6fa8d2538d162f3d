//! `xenring-backend`: the driver-domain side of xenring's split drivers.
//!
//! This crate will hold the `BackendDevice` trait, the backend daemon and the
//! built-in backends (block on an image file, net on TAP, chan to a Unix socket
//! or TCP target). They are built on the transport crate [`xenring`]; the device
//! model arrives with the XenBus work. Today the crate only re-exports the
//! transport so that dependents can already name it.
#![deny(missing_docs)]

pub use xenring;
