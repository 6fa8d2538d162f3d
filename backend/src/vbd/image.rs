//! The raw image file a `vbd` serves, locked as qemu locks images
//! ([`super::lock`]) while it is open. Every disk operation runs on
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
    size: u64,
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
    /// Opens `path` read-only or read-write. Its size is taken now; a
    /// partial last sector is served as a whole one whose tail reads as
    /// zeroes and drops what is written to it (the file never grows).
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
        super::lock::lock(&file, path, super::lock::Perms::device(readonly))?;
        Ok(Image {
            size: meta.len(),
            file: Arc::new(file),
            path: path.to_path_buf(),
            readonly,
        })
    }

    /// The same open image (and its locks) with its size taken again.
    pub fn refreshed(&self) -> io::Result<Image> {
        Ok(Image {
            size: self.file.metadata()?.len(),
            ..self.clone()
        })
    }

    /// Size in 512-byte sectors, the last one maybe partial.
    pub fn sectors(&self) -> u64 {
        self.size.div_ceil(512)
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether it was opened read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many of `len` bytes at `offset` lie inside the file; an error
    /// if the range ends past the last (partial) sector.
    fn inside(&self, offset: u64, len: u64) -> io::Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.sectors() * 512 => {
                Ok(self.size.saturating_sub(offset).min(len))
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes at {offset}: past the end of {} ({} bytes)",
                    len,
                    self.path.display(),
                    self.size
                ),
            )),
        }
    }

    /// Reads `len` bytes at byte `offset` (zeroes past the end of the
    /// file, in its last sector).
    pub async fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let f = self.file.clone();
        let n = self.inside(offset, len as u64)? as usize;
        blocking(move || {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf[..n], offset)?;
            Ok(buf)
        })
        .await
    }

    /// Writes `data` at byte `offset`; returns once `pwrite` returned.
    /// What falls past the end of the file, in its last sector, is dropped.
    pub async fn write(&self, offset: u64, mut data: Vec<u8>) -> io::Result<()> {
        let f = self.file.clone();
        let n = self.inside(offset, data.len() as u64)? as usize;
        data.truncate(n);
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
        let len = self.inside(offset, len)?;
        if len == 0 {
            return Ok(());
        }
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

    /// An image of 1000 bytes is two sectors; the second one's tail
    /// reads as zeroes, writes to it are dropped, the file stays 1000
    /// bytes; nothing past the second sector is served.
    #[tokio::test]
    async fn a_partial_last_sector_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![3u8; 1000]).unwrap();
        let img = Image::open(&p, false).unwrap();
        assert_eq!((img.sectors(), img.size()), (2, 1000));
        let got = img.read(512, 512).await.unwrap();
        assert_eq!(&got[..488], &[3u8; 488][..]);
        assert_eq!(&got[488..], &[0u8; 24][..]);
        img.write(512, vec![9u8; 512]).await.unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 1000, "the file grew");
        assert!(data[512..].iter().all(|&b| b == 9));
        assert!(img.read(1024, 1).await.is_err());
        assert!(img.write(1000, vec![0u8; 25]).await.is_err());
        img.discard(512, 512).await.unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1000);
        assert_eq!(img.read(512, 488).await.unwrap(), vec![0u8; 488]);
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
