//! xenstore-rs's async traits, implemented by [`XsClient`]: code written
//! against `xenstore_rs::AsyncXs` and `AsyncWatch` (the interface the
//! xenstore-rs crate defines for any XenStore) takes the hardened client
//! unchanged, on whatever socket it was connected to.
//!
//! Errors become `std::io::Error`s whose kind follows the server's errno
//! as xenstore-rs's own connection maps it (`ENOENT` is `NotFound`,
//! `EACCES` is `PermissionDenied`, ...), with the client's message (which
//! names the operation and the path) as their text.

use std::io;

use futures::{Stream, StreamExt};
use xenstore_rs::{AsyncWatch, AsyncXs};

use super::codec::XsErrno;
use super::error::XsError;
use super::XsClient;

/// The `io::Error` for a client error.
fn io_error(e: XsError) -> io::Error {
    let kind = match &e {
        XsError::Server { errno, .. } => match errno {
            XsErrno::Einval => io::ErrorKind::InvalidInput,
            XsErrno::Eacces | XsErrno::Eperm => io::ErrorKind::PermissionDenied,
            XsErrno::Eexist | XsErrno::Eisdir => io::ErrorKind::AlreadyExists,
            XsErrno::Enoent => io::ErrorKind::NotFound,
            XsErrno::Enomem => io::ErrorKind::OutOfMemory,
            XsErrno::Enospc => io::ErrorKind::StorageFull,
            XsErrno::Enotempty => io::ErrorKind::DirectoryNotEmpty,
            XsErrno::Enosys => io::ErrorKind::Unsupported,
            XsErrno::Erofs => io::ErrorKind::ReadOnlyFilesystem,
            XsErrno::Ebusy => io::ErrorKind::ResourceBusy,
            XsErrno::Eagain => io::ErrorKind::WouldBlock,
            XsErrno::E2big => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        },
        XsError::Timeout { .. } => io::ErrorKind::TimedOut,
        XsError::Invalid { .. } => io::ErrorKind::InvalidInput,
        XsError::Connect { source, .. } | XsError::Io { source, .. } => source.kind(),
        XsError::Conflict { .. } => io::ErrorKind::WouldBlock,
    };
    io::Error::new(kind, e)
}

impl AsyncXs for XsClient {
    async fn directory(&self, path: &str) -> io::Result<Vec<Box<str>>> {
        let names = XsClient::directory(self, path).await.map_err(io_error)?;
        Ok(names.into_iter().map(String::into_boxed_str).collect())
    }

    async fn read(&self, path: &str) -> io::Result<Box<str>> {
        let v = XsClient::read(self, path).await.map_err(io_error)?;
        Ok(v.into_boxed_str())
    }

    async fn write(&self, path: &str, data: &str) -> io::Result<()> {
        XsClient::write(self, path, data).await.map_err(io_error)
    }

    async fn rm(&self, path: &str) -> io::Result<()> {
        XsClient::rm(self, path).await.map_err(io_error)
    }
}

impl AsyncWatch for XsClient {
    async fn watch(
        &self,
        path: &str,
    ) -> io::Result<impl Stream<Item = Box<str>> + Unpin + 'static> {
        let w = XsClient::watch(self, path).await.map_err(io_error)?;
        Ok(w.map(String::into_boxed_str))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::xenstore::{Quotas, Xenstored};

    /// Written against xenstore-rs's traits only.
    async fn through_the_traits<X: AsyncXs + AsyncWatch>(xs: &X) -> io::Result<()> {
        let mut w = xs.watch("/traits").await?;
        assert_eq!(&*next(&mut w).await, "/traits");
        xs.write("/traits/a", "1").await?;
        assert_eq!(&*next(&mut w).await, "/traits/a");
        assert_eq!(&*xs.read("/traits/a").await?, "1");
        xs.write("/traits/b", "").await?;
        let mut names = xs.directory("/traits").await?;
        names.sort();
        assert_eq!(names, ["a".into(), "b".into()] as [Box<str>; 2]);
        xs.rm("/traits").await?;
        let e = xs.read("/traits/a").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("/traits/a"), "{e}");
        let e = xs.write("/traits//double", "x").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        Ok(())
    }

    async fn next(w: &mut (impl Stream<Item = Box<str>> + Unpin)) -> Box<str> {
        tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("an event within 10 s")
            .expect("the watch lives")
    }

    #[tokio::test]
    async fn the_client_serves_code_written_for_xenstore_rs() {
        let dir = tempfile::tempdir().unwrap();
        let xsd = Xenstored::start(dir.path(), Quotas::default()).unwrap();
        let xs = XsClient::connect(xsd.socket_path(0).unwrap())
            .await
            .unwrap();
        through_the_traits(&xs).await.unwrap();
    }
}
