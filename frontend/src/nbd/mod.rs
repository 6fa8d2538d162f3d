//! NBD (the Network Block Device protocol), written from the protocol
//! document: the server the `vbd` frontend exports its disk with, and a
//! small client for tests, the demo and the benchmark.
//!
//! | file | what |
//! |---|---|
//! | `proto.rs` | wire constants, the request header, the simple reply |
//! | `server.rs` | [`Export`] (what is served) and [`serve`] (one connection) |
//! | `client.rs` | [`NbdClient`] |
//!
//! Only simple replies are used (structured replies are refused as
//! unknown options); any alignment is accepted (`NBD_INFO_BLOCK_SIZE`
//! says minimum 1, preferred 4096, maximum 32 MiB).

mod client;
pub mod proto;
mod server;

pub use client::{ClientError, NbdClient};
pub use server::{serve, Errno, Export, ExportInfo, MAX_IN_FLIGHT, MAX_REQUEST};

#[cfg(test)]
mod tests {
    use super::proto::*;
    use super::*;
    use futures::future::BoxFuture;
    use std::sync::{Arc, Mutex};

    #[derive(Debug)]
    struct Mem {
        data: Mutex<Vec<u8>>,
        readonly: bool,
    }

    impl Export for Mem {
        fn info(&self) -> BoxFuture<'_, Result<ExportInfo, Errno>> {
            Box::pin(async move {
                Ok(ExportInfo {
                    size: self.data.lock().unwrap().len() as u64,
                    readonly: self.readonly,
                    flush: true,
                    trim: true,
                })
            })
        }
        fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, Result<Vec<u8>, Errno>> {
            Box::pin(async move {
                let d = self.data.lock().unwrap();
                Ok(d[offset as usize..offset as usize + len].to_vec())
            })
        }
        fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, Result<(), Errno>> {
            Box::pin(async move {
                let mut d = self.data.lock().unwrap();
                d[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                Ok(())
            })
        }
        fn flush(&self) -> BoxFuture<'_, Result<(), Errno>> {
            Box::pin(async { Ok(()) })
        }
        fn trim(&self, _o: u64, _l: u64) -> BoxFuture<'_, Result<(), Errno>> {
            Box::pin(async { Ok(()) })
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), Errno>> {
            Box::pin(async move {
                let mut d = self.data.lock().unwrap();
                d[offset as usize..(offset + len) as usize].fill(0);
                Ok(())
            })
        }
    }

    async fn pair(readonly: bool) -> (NbdClient, tokio::task::JoinHandle<std::io::Result<()>>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let export: Arc<dyn Export> = Arc::new(Mem {
            data: Mutex::new(vec![0u8; 1 << 20]),
            readonly,
        });
        let server = tokio::spawn(serve(a, export));
        (NbdClient::handshake(b).await.unwrap(), server)
    }

    #[tokio::test]
    async fn round_trip_concurrent_requests() {
        let (c, server) = pair(false).await;
        assert_eq!(c.size(), 1 << 20);
        assert_eq!(c.flags() & FLAG_READ_ONLY, 0);
        let c = Arc::new(c);
        let mut tasks = Vec::new();
        for i in 0..32u64 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let data = vec![i as u8 + 1; 1000 + i as usize];
                c.write(i * 8192 + 3, &data, i % 2 == 0).await.unwrap();
                assert_eq!(c.read(i * 8192 + 3, data.len() as u32).await.unwrap(), data);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        c.flush().await.unwrap();
        c.write_zeroes(3, 10).await.unwrap();
        assert_eq!(c.read(0, 16).await.unwrap()[3..13], [0u8; 10]);
        // Out of bounds: an error reply, the connection goes on.
        assert!(matches!(
            c.read((1 << 20) - 1, 2).await,
            Err(ClientError::Errno(EINVAL))
        ));
        assert!(matches!(
            c.write(1 << 20, &[1], false).await,
            Err(ClientError::Errno(ENOSPC))
        ));
        c.trim(0, 4096).await.unwrap();
        Arc::try_unwrap(c).unwrap().disconnect().await.unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn readonly_export_refuses_writes_with_eperm() {
        let (c, _server) = pair(true).await;
        assert_ne!(c.flags() & FLAG_READ_ONLY, 0);
        assert!(matches!(
            c.write(0, &[1; 512], false).await,
            Err(ClientError::Errno(EPERM))
        ));
        assert!(matches!(
            c.trim(0, 512).await,
            Err(ClientError::Errno(EPERM))
        ));
        assert_eq!(c.read(0, 4).await.unwrap(), vec![0; 4]);
    }
}
