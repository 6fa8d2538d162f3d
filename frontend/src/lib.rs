//! `xenring-frontend`: the guest side of xenring's split drivers.
//!
//! This crate will hold the `FrontendDevice` trait, the frontend daemon and the
//! built-in frontends (block exported over NBD, net over TAP, chan over a Unix
//! socket). They are built on the transport crate [`xenring`]; the device model
//! arrives with the XenBus work. Today the crate only re-exports the transport so
//! that dependents can already name it.
#![deny(missing_docs)]

pub use xenring;
