//! XenBus: how a frontend and a backend find each other in XenStore and
//! walk their device through the `XenbusState` handshake, and what the
//! toolstack does to create and remove devices.
//!
//! | module | what it holds |
//! |---|---|
//! | [`paths`] | [`DeviceId`] (kind, frontend, backend, devid) and [`Side`]: the frontend and backend dirs, nodenames, error paths; parsing them back |
//! | [`state`] | async helpers over [`XsClient`](crate::xenstore::XsClient): read, switch (never resurrecting a removed device) and watch a `state` node; publish and read a side's keys atomically; error nodes; typed key getters for device authors |
//! | [`toolstack`] | what `xl` does, as dom0: [`create_device`], [`remove_device`] (ask the backend to close, wait, remove), [`list_devices`] |
//! | `error` | [`XenbusError`], the one error type of this module |
//!
//! The sans-IO state machine (no tokio, no clock) will be `machine`.
//!
//! ## The handshake
//!
//! Either side may skip states, and the other must cope. Each arrow is a
//! write of the writer's own `state` node (or keys), seen by the other end
//! through a watch ([`watch_state`]).
//!
//! ```text
//!  toolstack (dom0)      frontend (domU)                     backend (driver domain)
//!  create_device:
//!    both dirs, state=1   Initialising (1)                    Initialising (1)
//!                                                             publish features
//!                                                             InitWait (2)
//!                         sees InitWait: grant ring,
//!                         bind event channel,
//!                         publish ring-ref, event-channel
//!                         Initialised (3)
//!                                                             sees Initialised: map ring,
//!                                                             bind event channel
//!                                                             Connected (4)
//!                         sees Connected: Connected (4)
//!                                   ... requests flow ...
//!  remove_device:
//!    backend online=0,
//!    backend state=5 ----------------------------------->  (its state is now Closing:)
//!                                                           stop, unmap
//!                         sees Closing: end grants,
//!                         unbind port, Closing (5),
//!                         Closed (6)
//!                                                           sees Closed, online 0:
//!                                                           Closed (6), stays
//!    sees backend Closed:
//!    rm both dirs, error nodes
//! ```
//!
//! An error on either side: write `error/<nodename>/error` under the
//! writer's home ([`write_error`]), then go Closing; the peer follows to
//! Closed. `xl`'s view: [`list_devices`] shows both states and errors.
//!
//! ## Reconnecting after a backend restart
//!
//! A backend daemon that dies leaves its `state` node behind (the nodes
//! belong to the device, not to the daemon's connection), and the ring
//! tells the frontend that the peer is dead. The new daemon cannot adopt
//! the old ring: it finds its own stale state and closes the device, and
//! the frontend starts it over. The rules that restart a device (Linux's
//! blkback and netback follow the backend's rule):
//! * a frontend that reaches Closed while it still wants the device (it is
//!   not going away) goes to Initialising again;
//! * a backend that is Closed, whose `online` is 1, and whose frontend is
//!   Initialising, goes to InitWait again ("prepare for reconnect").
//!
//! ```text
//!  frontend                                        backend
//!  Connected (4)                                   Connected (4)
//!                                                  (daemon dies; its state node stays 4;
//!                                                   the frontend's ring reports the
//!                                                   peer's death: it stops using it)
//!                                                  new daemon: own state is 4 but it
//!                                                  holds no mapping: Closing (5)
//!  sees Closing: end grants, unbind port,
//!  Closing (5), Closed (6)
//!                                                  sees Closed: Closed (6)
//!  sees Closed, still wanted: Initialising (1)
//!                                                  Closed, online 1, frontend
//!                                                  Initialising: publish features,
//!                                                  InitWait (2)
//!  sees InitWait: new ring and port,
//!  publish them, Initialised (3)
//!                                                  map the new ring, Connected (4)
//!  sees Connected: Connected (4)
//! ```
//!
//! The toolstack is not involved: `online` stays 1, so the backend starts
//! over instead of going away (when `online` is 0 the device is being
//! removed and the backend stays Closed). A frontend daemon that restarts
//! does the mirror image: it finds its own stale Connected and goes
//! Closing; the backend unmaps and goes Closed; the frontend goes Closed
//! and then Initialising; the backend goes InitWait, and the handshake
//! runs again.

pub mod cli;
pub mod daemon;
pub mod device;
mod error;
pub mod machine;
pub mod paths;
pub mod state;
pub mod task;
pub mod toolstack;

#[cfg(test)]
mod tests;

pub use error::XenbusError;
pub use paths::{DeviceId, Side, DOMID_FIRST_RESERVED};
pub use state::{
    clear_error, parse_domid_key, parse_grant_ref_key, parse_port_key, parse_u32_key, publish,
    read_error, read_keys, read_state, switch_state, wait_for_state, watch_state, write_error,
    StateWatch, ERROR_MAX,
};
pub use toolstack::{
    create_device, find_device, free_devid, list_devices, remove_device, DeviceSpec, DeviceStatus,
    NodeState, RemoveOptions,
};

/// A XenStore error outside a named helper (the inner error names the
/// operation and the node).
impl From<crate::xenstore::XsError> for XenbusError {
    fn from(error: crate::xenstore::XsError) -> Self {
        XenbusError::Xs {
            op: "xenstore",
            path: String::new(),
            error,
        }
    }
}
