//! XenBus: how a frontend and a backend find each other in XenStore and
//! walk their device through the `XenbusState` handshake, and what the
//! toolstack does to create and remove devices.
//!
//! | module | what it holds |
//! |---|---|
//! | [`paths`] | [`DeviceId`] (kind, frontend, backend, devid) and [`Side`]: the frontend and backend dirs, nodenames, error paths; parsing them back |
//! | [`state`] | async helpers over [`XsClient`](crate::xenstore::XsClient): read, switch (never resurrecting a removed device) and watch a `state` node; publish and read a side's keys atomically; error nodes; typed key getters for device authors |
//! | [`toolstack`] | what `xl` does, as dom0: [`create_device`], [`remove_device`] (ask the backend to close, wait, remove), [`list_devices`] |
//! | [`machine`] | the sans-IO backend and frontend state machines (no tokio, no clock), level-triggered |
//! | [`device`] | what a device sees: `BackendConn` / `FrontendConn` (ring and stream helpers, `ready()`, `stopped()`), `DeviceError` |
//! | [`task`] | the per-device task: runs a machine against XenStore and the device |
//! | [`daemon`] | finds a domain's devices, one task each: hot-plug, removal, `@releaseDomain`, shutdown |
//! | [`cli`] | what every daemon binary shares: platform and XenStore options, logging, signals |
//! | `error` | [`XenbusError`], the one error type of this module |
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
//! belong to the device, not to the daemon's process), and the ring tells
//! the frontend that the peer is dead (its unmap notification clears the
//! live byte). The rules, in [`machine`]:
//! * a frontend whose connection ends (the peer went away) or that reaches
//!   Closed while the device exists goes to Initialising and waits for a
//!   backend's InitWait;
//! * a backend that is Closed, whose `online` is 1, and whose frontend is
//!   Initialising, goes to InitWait again ("prepare for reconnect");
//! * a backend that starts and finds its frontend Initialised or Connected
//!   knows those keys belong to a backend that died: it writes Closed and
//!   waits for the frontend to leave those states before InitWait, so it
//!   never maps a ring the frontend is tearing down.
//!
//! ```text
//!  frontend                                        backend
//!  Connected (4)                                   Connected (4)
//!                                                  (daemon killed; its state node stays 4)
//!  the ring reports the peer's death:
//!  end grants, unbind; Initialising (1)
//!                                                  new daemon: frontend Initialising:
//!                                                  publish features, InitWait (2)
//!  sees InitWait: new ring and port,
//!  publish them, Initialised (3)
//!                                                  map the new ring, Connected (4)
//!  sees Connected: Connected (4)
//!
//!  (if the new daemon comes before the frontend noticed:)
//!  Connected (4), stale to the new backend         sees frontend 4: Closed (6)
//!  sees Closed: tear down, Closing, Closed,
//!  Initialising (1)                                sees Initialising: InitWait (2) ...
//! ```
//!
//! The toolstack is not involved: `online` stays 1, so the backend starts
//! over instead of going away (when `online` is 0 the device is being
//! removed and the backend stays Closed). A frontend daemon that restarts
//! writes Initialising at once; the backend, connected to the dead one,
//! sees Initialising, unmaps, and answers InitWait.

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
    create_device, device_keys, device_status, find_device, free_devid, list_devices,
    remove_device, wait_connected, DeviceSpec, DeviceStatus, NodeState, RemoveOptions, WaitOutcome,
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
