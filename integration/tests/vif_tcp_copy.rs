//! 256 MiB by TCP through the vif device in copy mode (the receive pool's
//! granted pages filled by grant copy, as on real Xen), checksummed at
//! both ends: see vif_common.

mod vif_common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_256_mib_in_copy_mode() -> anyhow::Result<()> {
    vif_common::tcp_256_mib("copy").await
}
