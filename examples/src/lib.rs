//! Small programs built on xenring that a reader can follow in one sitting.
//! Each example in `examples/` is a thin `main` around a function here, so
//! that the tests exercise exactly what the example runs.
//!
//! | module | what |
//! |---|---|
//! | [`echo_driver`] | a split driver with its own request/response protocol: backend, frontend, application |
//! | [`embedded_service`] | a dom0 service that embeds the backend daemon and serves guests' sockets itself |
//! | [`demo`] | the one-command demo (`xenring-demo`) |
//! | [`demo_vbd`] | the demo's block device part: an image written and read back through NBD |
//! | [`demo_vif`] | the demo's network part; namespaces, the vif device, ping and a TCP tool for the vif tests |
//! | [`ping`] | the demo's own ping: ICMP echo over a raw socket inside a namespace |
//! | [`system`] | a whole simulated system in one process tree, for the demo and the tests |

pub mod demo;
pub mod demo_vbd;
pub mod demo_vif;
pub mod echo_driver;
pub mod embedded_service;
pub mod ping;
pub mod system;

use std::path::Path;

use xenring::platform::{Access, Platform};
use xenring::sim::{HostConfig, SimDomain, SimHost};

/// Starts a simulated host with its control socket in `dir`, joins two
/// domains, has domain 1 share a page with domain 0, and the two exchange a
/// message through the page and an event channel. Returns what domain 0
/// read.
pub async fn share_a_page(dir: &Path) -> anyhow::Result<String> {
    let host = SimHost::start(dir.join("control.sock"), HostConfig::default())?;
    let backend = SimDomain::connect(host.control_path(), 0)?;
    let frontend = SimDomain::connect(host.control_path(), 1)?;

    // The frontend grants one page to the backend and offers a port.
    let page = frontend.share_pages(0, 1, Access::ReadWrite)?;
    let port = frontend.alloc_unbound_port(0)?;
    page.memory().write(0, b"hello from domain 1");

    // The backend maps the grant and binds to the port (in a real driver,
    // the reference and port number travel through XenStore).
    let mapping = backend.map_grants(1, page.refs(), Access::ReadWrite)?;
    let backend_port = backend.bind_interdomain(1, port.local_port())?;
    port.notify()?;
    backend_port.wait().await?;
    let mut buf = [0u8; 19];
    mapping.memory().read(0, &mut buf);

    // Tear down in order: unmap before the grant can end.
    mapping.unmap()?;
    page.end().map_err(|(_, e)| e)?;
    drop((port, backend_port));
    host.report().assert_clean();
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_share_a_page_example_runs() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            super::share_a_page(dir.path()).await.unwrap(),
            "hello from domain 1"
        );
    }
}
