//! The raw image file a `vbd` serves. Every disk operation runs on
//! tokio's blocking pool (`spawn_blocking`), so the runtime threads never
//! wait for the disk and many requests can be in flight (positional
//! `pread`/`pwrite`, no shared file offset). A call returns only once the
//! system call completed: a write answered to the frontend is in the
//! kernel's page cache and survives the daemon's death; a flush
//! (`fdatasync`) makes it survive the machine's.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open image file.
#[derive(Debug, Clone)]
pub struct Image {
    file: Arc<File>,
    path: PathBuf,
    sectors: u64,
    readonly: bool,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("disk task failed: {e}"))))
}

impl Image {
    /// Opens `path` read-only or read-write. Its size in 512-byte sectors
    /// is taken now (a partial last sector is not served).
    pub fn open(path: &Path, readonly: bool) -> io::Result<Image> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        let meta = file.metadata()?;
        if !meta.is_file() && !std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        Ok(Image {
            sectors: meta.len() / 512,
            file: Arc::new(file),
            path: path.to_path_buf(),
            readonly,
        })
    }

    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether it was opened read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads `len` bytes at byte `offset`.
    pub async fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let f = self.file.clone();
        blocking(move || {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        })
        .await
    }

    /// Writes `data` at byte `offset`; returns once `pwrite` returned.
    pub async fn write(&self, offset: u64, data: Vec<u8>) -> io::Result<()> {
        let f = self.file.clone();
        blocking(move || f.write_all_at(&data, offset)).await
    }

    /// `fdatasync`: every write completed so far reaches stable storage.
    pub async fn flush(&self) -> io::Result<()> {
        let f = self.file.clone();
        blocking(move || f.sync_data()).await
    }

    /// Punches a hole of `len` bytes at `offset` (the size stays): the
    /// range reads back as zeroes and its blocks are freed.
    pub async fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let f = self.file.clone();
        blocking(move || {
            use rustix::fs::{fallocate, FallocateFlags};
            fallocate(
                &*f,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                offset,
                len,
            )
            .map_err(io::Error::from)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn read_write_flush_discard() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        let img = Image::open(&p, false).unwrap();
        assert_eq!(img.sectors(), 2048);
        img.write(4096, vec![1u8; 8192]).await.unwrap();
        img.flush().await.unwrap();
        let got = img.read(4000, 200).await.unwrap();
        assert_eq!(&got[..96], &[7u8; 96][..]);
        assert_eq!(&got[96..], &[1u8; 104][..]);
        let before = std::fs::metadata(&p).unwrap().blocks();
        img.discard(0, 512 << 10).await.unwrap();
        let after = std::fs::metadata(&p).unwrap();
        assert_eq!(after.len(), 1 << 20, "discard keeps the size");
        assert!(
            after.blocks() < before,
            "{} blocks, was {before}",
            after.blocks()
        );
        assert_eq!(img.read(0, 16).await.unwrap(), vec![0u8; 16]);
        // Reads past the end fail instead of returning short data.
        assert!(img.read((1 << 20) - 8, 16).await.is_err());
    }

    #[tokio::test]
    async fn readonly_image_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let img = Image::open(&p, true).unwrap();
        assert!(img.readonly());
        assert!(img.write(0, vec![1; 512]).await.is_err());
    }
}
