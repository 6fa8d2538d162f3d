//! # xenring
//!
//! An async inter-domain shared-ring transport for Xen, on tokio.
//!
//! | module | what it holds |
//! |---|---|
//! | [`abi`] | typed views over every shared binary format |
//! | [`chan`] | many byte-stream channels multiplexed over one vchan, and the Unix/TCP socket proxy over them |
//! | [`shm`] | mapped shared memory (one of two modules with `unsafe`) |
//! | [`instance`] | one instance at a time: the lock files of the simulated host and the daemons |
//! | [`grant`] | the guest side of the grant table: the seed's rules, reference allocation |
//! | [`platform`] | the small traits all protocol code is written against |
//! | [`ring`] | sans-IO request/response rings compatible with Xen's `io/ring.h` |
//! | [`rxpool`] | receive pools: accept-transfer (page flipping) or grant-copy slots a peer fills, recycled |
//! | [`sim`] | the simulated Xen host and its domain-side client |
//! | [`stream`] | the sans-IO vchan byte ring (libxenvchan layout and notify bits), server and client ends |
//! | [`xenbus`] | the XenBus device handshake: state machines, helpers, device nodes |
//! | [`xenstore`] | the xs_wire codec, the embedded xenstored, the hardened client |
//! | [`xenbus`] | device paths, async XenbusState helpers (read, switch, watch, publish, errors), the device toolstack |
#![deny(missing_docs)]

pub mod abi;
pub mod chan;
pub mod grant;
pub mod instance;
pub mod platform;
pub mod ring;
pub mod rxpool;
pub mod shm;
pub mod sim;
pub mod stream;
pub mod xenbus;
pub mod xenstore;
