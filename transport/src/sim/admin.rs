//! An administrator's connection to the simulated host, for tools and
//! tests in other processes.

use std::os::fd::OwnedFd;
use std::path::Path;

use super::domain::{call_on, connect_to, reply_error};
use super::report::HostReport;
use super::wire::{Reply, Request};
use crate::platform::{DomId, Result};

/// An administrator's connection to the host (a toolstack): reports,
/// domain creation and destruction, for tools and tests in other processes.
#[derive(Debug)]
pub struct SimAdmin {
    conn: OwnedFd,
}

impl SimAdmin {
    /// Connects to the host at `socket` as an administrator.
    pub fn connect(socket: impl AsRef<Path>) -> Result<SimAdmin> {
        let conn = connect_to(socket.as_ref())?;
        match call_on(&conn, &Request::Admin)?.0 {
            Reply::Ok => Ok(SimAdmin { conn }),
            other => Err(reply_error(other)),
        }
    }

    /// What every domain holds.
    pub fn report(&self) -> Result<HostReport> {
        match call_on(&self.conn, &Request::Report)?.0 {
            Reply::Report(r) => Ok(r),
            other => Err(reply_error(other)),
        }
    }

    /// Creates a persistent domain `domid`, with no session: processes
    /// join it later and may come and go; it lives until destroyed.
    /// Refused (`EEXIST`, "domain N already exists") if it exists.
    pub fn create_domain(&self, domid: DomId) -> Result<()> {
        match call_on(&self.conn, &Request::CreateDomain { domid })?.0 {
            Reply::Ok => Ok(()),
            other => Err(reply_error(other)),
        }
    }

    /// Destroys a domain and all its sessions.
    pub fn destroy_domain(&self, domid: DomId) -> Result<()> {
        match call_on(&self.conn, &Request::Destroy { domid })?.0 {
            Reply::Ok => Ok(()),
            other => Err(reply_error(other)),
        }
    }

    /// The host's xenstored socket for domain `domid` (where a client
    /// speaking as that domain connects).
    pub fn xenstore_path(&self, domid: DomId) -> Result<std::path::PathBuf> {
        match call_on(&self.conn, &Request::XenstorePath { domid })?.0 {
            Reply::Path { path } => Ok(path.into()),
            other => Err(reply_error(other)),
        }
    }
}
