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

/// The buffer of zeroes a write-zeroes writes at a time where the file
/// system cannot zero a range itself (counted in the device's in-flight
/// bytes).
pub const ZERO_CHUNK: usize = 64 << 10;

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

    /// Zeroes `len` bytes at `offset`: deallocates them when `unmap`
    /// (`fallocate(PUNCH_HOLE)`), else zeroes them in place
    /// (`ZERO_RANGE`); where the file system cannot, writes zeroes, or
    /// fails with [`io::ErrorKind::Unsupported`] when `fast`.
    pub async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        fast: bool,
    ) -> io::Result<()> {
        let f = self.file.clone();
        let len = self.inside(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        blocking(move || {
            use rustix::fs::{fallocate, FallocateFlags};
            let mode = if unmap {
                FallocateFlags::PUNCH_HOLE
            } else {
                FallocateFlags::ZERO_RANGE
            } | FallocateFlags::KEEP_SIZE;
            match fallocate(&*f, mode, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if e == rustix::io::Errno::OPNOTSUPP && !fast => {}
                Err(e) if e == rustix::io::Errno::OPNOTSUPP => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "the file system cannot zero quickly",
                    ))
                }
                Err(e) => return Err(e.into()),
            }
            let zeroes = vec![0u8; len.min(ZERO_CHUNK as u64) as usize];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(zeroes.len() as u64) as usize;
                f.write_all_at(&zeroes[..n], offset + at)?;
                at += n as u64;
            }
            Ok(())
        })
        .await
    }

    /// The allocation of `len` bytes at `offset` (`SEEK_DATA`/`SEEK_HOLE`):
    /// consecutive (length, hole) extents from `offset`, at most `max` of
    /// them, together at most `len` bytes. Past the end of the file (the
    /// last sector's tail) goes with the extent before it.
    pub async fn block_status(
        &self,
        offset: u64,
        len: u64,
        max: usize,
    ) -> io::Result<Vec<(u64, bool)>> {
        let f = self.file.clone();
        let size = self.size;
        self.inside(offset, len)?;
        blocking(move || {
            use rustix::fs::{seek, SeekFrom};
            let end = offset + len;
            let mut out: Vec<(u64, bool)> = Vec::new();
            let mut at = offset;
            while at < end && out.len() < max {
                if at >= size {
                    // The last sector's tail past the file: reads as zeroes.
                    push(&mut out, end - at, true);
                    break;
                }
                let data = match seek(&*f, SeekFrom::Data(at)) {
                    Ok(d) => d.min(size),
                    Err(rustix::io::Errno::NXIO) => size,
                    Err(e) => return Err(e.into()),
                };
                if data > at {
                    // A hole up to the next data (or on to the end).
                    let stop = if data >= size { end } else { data.min(end) };
                    push(&mut out, stop - at, true);
                    at = stop;
                    continue;
                }
                let hole = match seek(&*f, SeekFrom::Hole(at)) {
                    Ok(h) => h.min(size),
                    Err(e) => return Err(e.into()),
                };
                // Data runs to the hole (or the file's end, and then on
                // to the end of its last sector).
                let stop = if hole >= size { end } else { hole.min(end) };
                push(&mut out, stop - at, false);
                at = stop;
            }
            Ok(out)
        })
        .await
    }
}

/// Appends an extent, merged with the last one when they are alike.
fn push(out: &mut Vec<(u64, bool)>, len: u64, hole: bool) {
    match out.last_mut() {
        Some(last) if last.1 == hole => last.0 += len,
        _ => out.push((len, hole)),
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

    /// Holes punched by write-zeroes show in the block status; zeroing
    /// without unmap keeps the blocks; a hole's bytes read as zeroes.
    #[tokio::test]
    async fn write_zeroes_and_block_status() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        let img = Image::open(&p, false).unwrap();
        assert_eq!(
            img.block_status(0, 1 << 20, 16).await.unwrap(),
            vec![(1 << 20, false)]
        );
        img.write_zeroes(64 << 10, 128 << 10, true, false)
            .await
            .unwrap();
        assert_eq!(
            img.block_status(0, 1 << 20, 16).await.unwrap(),
            vec![(64 << 10, false), (128 << 10, true), (832 << 10, false)]
        );
        assert_eq!(img.read(64 << 10, 4096).await.unwrap(), vec![0u8; 4096]);
        // A range inside: clipped to it; at most `max` extents.
        assert_eq!(
            img.block_status(60 << 10, 8 << 10, 16).await.unwrap(),
            vec![(4 << 10, false), (4 << 10, true)]
        );
        assert_eq!(
            img.block_status(0, 1 << 20, 1).await.unwrap(),
            vec![(64 << 10, false)]
        );
        img.write_zeroes(512 << 10, 4096, false, true)
            .await
            .unwrap();
        assert_eq!(img.read(512 << 10, 4096).await.unwrap(), vec![0u8; 4096]);
        assert_eq!(
            img.block_status(512 << 10, 4096, 4).await.unwrap(),
            vec![(4096, false)]
        );
        assert!(img.write_zeroes(1 << 20, 512, true, false).await.is_err());
        assert!(img.block_status(1 << 20, 512, 4).await.is_err());
        // An odd-sized image: its last sector's tail is data.
        let q = dir.path().join("odd");
        std::fs::write(&q, vec![1u8; 1000]).unwrap();
        let odd = Image::open(&q, false).unwrap();
        assert_eq!(
            odd.block_status(0, 1024, 4).await.unwrap(),
            vec![(1024, false)]
        );
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
