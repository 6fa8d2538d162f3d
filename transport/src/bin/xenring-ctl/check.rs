//! What `device add` checks before it writes anything: the kind, and the
//! keys the built-in devices need, by the rules their daemons apply when
//! the device starts (which would otherwise show only in the device's
//! error node, after `add` said it was done).

use std::path::Path;

use xenring::abi::netif::{check_tap_name, parse_mtu};
use xenring::chan::Target;

/// The kinds the bundled daemons serve.
pub const BUILT_IN: [&str; 3] = ["chan", "vbd", "vif"];

/// A device about to be added.
pub struct Planned<'a> {
    pub kind: &'a str,
    pub backend_params: &'a [(String, String)],
    pub frontend_params: &'a [(String, String)],
    /// The kind is served by the caller's own daemon: skip the built-in
    /// rules.
    pub custom: bool,
    /// The backend runs on this machine (dom0 of a simulated host, or
    /// dom0 on real Xen when this runs in dom0), so its files can be
    /// checked here.
    pub backend_local: bool,
}

fn get<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `Ok` if the device can work as far as can be told here; else what is
/// wrong, naming the key.
pub fn check(p: &Planned<'_>) -> Result<(), String> {
    if p.custom {
        if BUILT_IN.contains(&p.kind) {
            return Err(format!(
                "--custom: {} is a built-in kind; drop --custom to have its keys checked",
                p.kind
            ));
        }
        return Ok(());
    }
    let be = |k: &str| get(p.backend_params, k);
    let fe = |k: &str| get(p.frontend_params, k);
    match p.kind {
        "chan" => {
            let t = be("target").ok_or(
                "a chan device needs --backend-param target=tcp:HOST:PORT or target=unix:PATH",
            )?;
            t.parse::<Target>()
                .map_err(|e| format!("--backend-param target: {e}"))?;
        }
        "vbd" => {
            let raw = be("params")
                .ok_or("a vbd device needs --backend-param params=PATH (its disk image)")?;
            let path = ["aio:", "file:", "raw:"]
                .iter()
                .find_map(|x| raw.strip_prefix(x))
                .unwrap_or(raw);
            if path.is_empty() {
                return Err("--backend-param params: the image path is empty".into());
            }
            match be("mode") {
                None | Some("r" | "ro" | "w" | "rw") => {}
                Some(m) => return Err(format!("--backend-param mode={m:?}: expected r or w")),
            }
            if p.backend_local {
                check_image(Path::new(path))?;
            }
            if let Some(a) = fe("nbd-tcp") {
                let sa: std::net::SocketAddr = a.parse().map_err(|e| {
                    format!("--frontend-param nbd-tcp={a:?}: not an address:port ({e})")
                })?;
                if !sa.ip().is_loopback() {
                    return Err(format!(
                        "--frontend-param nbd-tcp={a}: only loopback addresses are served"
                    ));
                }
            }
        }
        "vif" => {
            for (side, params) in [
                ("backend", p.backend_params),
                ("frontend", p.frontend_params),
            ] {
                if let Some(name) = get(params, "tap") {
                    check_tap_name(name).map_err(|e| format!("--{side}-param tap: {e}"))?;
                }
                parse_mtu(get(params, "mtu")).map_err(|e| format!("--{side}-param mtu: {e}"))?;
            }
        }
        other => {
            return Err(format!(
                "unknown kind {other:?}: the bundled daemons serve {}; pass --custom for a kind \
                 your own daemon serves",
                BUILT_IN.join(", ")
            ))
        }
    }
    Ok(())
}

/// The image a vbd backend on this machine will open.
fn check_image(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("--backend-param params: cannot use the image {shown}: {e}"))?;
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(format!(
            "--backend-param params: {shown} is not a regular file or block device"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn run(
        kind: &str,
        be: &[(&str, &str)],
        fe: &[(&str, &str)],
        custom: bool,
    ) -> Result<(), String> {
        let (be, fe) = (kv(be), kv(fe));
        check(&Planned {
            kind,
            backend_params: &be,
            frontend_params: &fe,
            custom,
            backend_local: true,
        })
    }

    #[test]
    fn built_in_kinds_need_their_keys() {
        assert!(run("chan", &[("target", "tcp:127.0.0.1:7")], &[], false).is_ok());
        let e = run("chan", &[], &[], false).unwrap_err();
        assert!(e.contains("target="), "{e}");
        let e = run("chan", &[("target", "tcp:h:0")], &[], false).unwrap_err();
        assert!(e.contains("target") && e.contains("port"), "{e}");

        let e = run("vbd", &[], &[], false).unwrap_err();
        assert!(e.contains("params=PATH"), "{e}");
        let e = run("vbd", &[("params", "/nonexistent/disk.img")], &[], false).unwrap_err();
        assert!(e.contains("/nonexistent/disk.img"), "{e}");
        let img = tempfile::NamedTempFile::new().unwrap();
        let p = img.path().to_str().unwrap();
        assert!(run("vbd", &[("params", p), ("mode", "r")], &[], false).is_ok());
        let e = run("vbd", &[("params", p), ("mode", "x")], &[], false).unwrap_err();
        assert!(e.contains("mode"), "{e}");
        let e = run(
            "vbd",
            &[("params", p)],
            &[("nbd-tcp", "10.0.0.1:10809")],
            false,
        )
        .unwrap_err();
        assert!(e.contains("loopback"), "{e}");

        assert!(run("vif", &[], &[], false).is_ok());
        let e = run("vif", &[("mtu", "70000")], &[], false).unwrap_err();
        assert!(e.contains("mtu"), "{e}");
        let e = run("vif", &[], &[("tap", "this-name-is-far-too-long")], false).unwrap_err();
        assert!(e.contains("--frontend-param tap"), "{e}");
    }

    #[test]
    fn unknown_kinds_need_custom() {
        let e = run("echo", &[], &[], false).unwrap_err();
        assert!(
            e.contains("unknown kind \"echo\"") && e.contains("--custom"),
            "{e}"
        );
        assert!(run("echo", &[], &[], true).is_ok());
        assert!(run("vbd", &[], &[], true).unwrap_err().contains("built-in"));
    }
}
