//! What the vbd scenarios share: a system with a backend and a frontend
//! daemon and one vbd device on an image file in a temp dir, the real
//! clients (qemu-utils) they run, and the teardown that checks nothing
//! leaked.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use xenring::sim::HostConfig;
use xenring::xenbus::DeviceId;
use xenring_examples::system::{Daemon, System};

/// One system with one vbd device.
pub struct Vbd {
    pub sys: System,
    pub backend: Option<Daemon>,
    pub frontend: Daemon,
    pub id: DeviceId,
    pub image: PathBuf,
    pub sock: PathBuf,
    pub dir: tempfile::TempDir,
}

/// The path of a tool, or an error naming the package to install.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    for d in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let package = match name {
        "nbdinfo" => "libnbd-bin",
        _ => "qemu-utils",
    };
    bail!("{name} not found on PATH: install Debian's {package} (test.sh does)")
}

/// Runs `prog args` (off the runtime's threads); returns stdout+stderr,
/// or an error with both if it failed.
pub async fn run(prog: &str, args: &[String]) -> anyhow::Result<String> {
    let (ok, out) = run_status(prog, args).await?;
    if !ok {
        bail!("{prog} {} failed:\n{out}", args.join(" "));
    }
    Ok(out)
}

/// Like [`run`] but returns whether it succeeded with the output.
pub async fn run_status(prog: &str, args: &[String]) -> anyhow::Result<(bool, String)> {
    let path = tool(prog)?;
    let args = args.to_vec();
    let out = tokio::task::spawn_blocking(move || Command::new(path).args(&args).output())
        .await?
        .with_context(|| format!("running {prog}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// The qemu URI of an NBD Unix socket.
pub fn uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

/// A sparse image file of `size` bytes.
pub fn make_image(path: &Path, size: u64) -> anyhow::Result<()> {
    let f = std::fs::File::create(path)?;
    f.set_len(size)?;
    Ok(())
}

impl Vbd {
    /// Starts the host, both daemons and the device on a fresh image of
    /// `size` bytes (or `image` if it exists), and waits for Connected and
    /// the NBD socket.
    pub async fn start(size: u64, readonly: bool) -> anyhow::Result<Vbd> {
        Vbd::start_with(size, readonly, &[]).await
    }

    /// [`Vbd::start`] with extra frontend keys.
    pub async fn start_with(
        size: u64,
        readonly: bool,
        fe_keys: &[(&str, &str)],
    ) -> anyhow::Result<Vbd> {
        let dir = tempfile::tempdir()?;
        let image = dir.path().join("disk.img");
        make_image(&image, size)?;
        let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
        let sys = System::start(dir.path(), node, HostConfig::default()).await?;
        sys.create_domain(1)?;
        let backend = sys.spawn_backend(0, &["--devices", "vbd"])?;
        let frontend = sys.spawn_frontend(1, &["--devices", "vbd"])?;
        let id = sys.add_vbd_with(1, 0, &image, readonly, fe_keys).await?;
        let sock = sys.vbd_socket(1, 0);
        let v = Vbd {
            sys,
            backend: Some(backend),
            frontend,
            id,
            image,
            sock,
            dir,
        };
        v.wait_connected().await?;
        Ok(v)
    }

    /// Waits until both ends are Connected and the socket exists.
    pub async fn wait_connected(&self) -> anyhow::Result<()> {
        self.sys
            .wait_connected(&self.id, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))?;
        for _ in 0..500 {
            if self.sock.exists() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("no socket {}\n{}", self.sock.display(), self.logs())
    }

    /// Both daemons' logs.
    pub fn logs(&self) -> String {
        format!(
            "backend log:\n{}\nfrontend log:\n{}",
            self.backend.as_ref().map(|b| b.log()).unwrap_or_default(),
            self.frontend.log()
        )
    }

    /// Removes the device, stops both daemons, checks that the host
    /// reports nothing left behind.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.sys.remove(&self.id, Duration::from_secs(10)).await?;
        assert!(self.frontend.terminate(Duration::from_secs(10))?.success());
        if let Some(b) = self.backend.take() {
            assert!(b.terminate(Duration::from_secs(10))?.success());
        }
        self.sys.wait_clean(Duration::from_secs(10)).await?;
        self.sys.shutdown();
        Ok(())
    }
}
