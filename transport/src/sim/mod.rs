//! The simulated Xen host.
//!
//! One host (in its own process, `xenring-sim run`, or inside a test with
//! [`SimHost::start`]) owns machine memory (one sparse memfd), who owns each
//! frame, one grant table per domain in shared memory, and the event-channel
//! table. Processes join its domains over a control socket
//! ([`SimDomain::connect`], or [`SimDomain::from_env`] under
//! `xenring-sim exec --domid N -- CMD`), each as one *session* of its
//! domain. A domain is created by a toolstack ([`SimAdmin::create_domain`],
//! `xenring-sim create`) and lives until destroyed, or implicitly by the
//! first process that joins it and then lives as long as some process is
//! in it; a process that dies takes only its own session's resources with
//! it.
//!
//! ```text
//!   domain 1 process                host process                domain 0 process
//!   ----------------                ------------                ----------------
//!   grant table (writes) ==shm==> grant tables (CAS on map)
//!   share_pages: no host call
//!                                 map(1, refs) <--- control --- map_grants
//!                                  pin entries, answer frames    mmap frames
//!   notify: write(eventfd) ------------------------------------> poll_event
//! ```
//!
//! Nothing here is a security boundary between processes of one user: any
//! process that can reach the control socket may join as any domain,
//! dom0 included (so destroy domains and speak to XenStore as dom0), and
//! every session holds a file descriptor of the whole machine memory
//! (it maps only the frames the host hands it, but could map any). The
//! sockets live in a folder only their user may write (`dir`), so other
//! users stay out. Within that, the host checks every rule Xen checks,
//! refuses misuse with Xen's status codes, and reports per domain what is
//! still granted, mapped or bound, and what XenStore still holds of
//! destroyed domains ([`HostReport`]), so that tests can assert nothing
//! leaked.

mod admin;
mod dir;
mod domain;
mod handles;
mod host;
mod hv;
pub mod report;
pub mod selftest;
// Public (and hidden) only so that the fuzz targets (`transport/fuzz`) can
// reach the control protocol's decoders; not part of the stable API.
#[doc(hidden)]
pub mod wire;

pub use admin::SimAdmin;
pub use domain::SimDomain;
pub use handles::{SimChannel, SimMapping, SimPages, SimShare, SimSlot};
pub use host::{default_socket_path, SimHost, ENV_DOMID, ENV_SOCKET};
pub use hv::HostConfig;
pub use report::{DomainReport, DomainState, HostReport};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_sessions;
#[cfg(test)]
mod tests_xenstore;
