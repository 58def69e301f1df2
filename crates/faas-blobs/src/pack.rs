//! A directory as chunks: every regular file cut at fixed offsets (so that the same data at
//! the same place in two snapshots is one chunk), holes and all-zero chunks left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{BlobStore, Digest};

/// The pack format; a reader refuses others.
pub const PACK_VERSION: u32 = 1;
/// Chunk size: CRIU's page images and disk images align to pages and blocks.
pub const CHUNK_BYTES: u64 = 256 << 10;
/// Fast enough to pack hundreds of MB a second on one core, and most of the gain.
const ZSTD_LEVEL: i32 = 3;

/// What a directory held, as chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pack {
    pub version: u32,
    pub files: Vec<PackedFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedFile {
    /// Relative to the packed directory, `/`-separated.
    pub path: String,
    pub mode: u32,
    pub size: u64,
    /// In offset order; what no chunk covers reads as zeros.
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
    pub digest: Digest,
}

/// What packing did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackStats {
    /// Bytes of data packed (holes and zero chunks excluded).
    pub bytes: u64,
    /// The compressed size of every chunk the pack holds (each once).
    pub chunks: BTreeMap<Digest, u64>,
    /// Chunks this pack added to the store, and their compressed bytes.
    pub new_chunks: u64,
    pub new_bytes: u64,
}

impl Pack {
    /// Every chunk the pack holds, each once.
    pub fn digests(&self) -> BTreeSet<Digest> {
        self.files.iter().flat_map(|f| f.chunks.iter().map(|c| c.digest)).collect()
    }
}

/// Packs the regular files under `dir` into `store`; `salt` keeps one owner's chunks apart
/// from another's.
pub fn pack(store: &dyn BlobStore, salt: &[u8], dir: &Path) -> io::Result<(Pack, PackStats)> {
    let mut files = Vec::new();
    let mut stats = PackStats::default();
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    for rel in walk(dir)? {
        let file = File::open(dir.join(&rel))?;
        let meta = file.metadata()?;
        let size = meta.len();
        let mut chunks = Vec::new();
        for index in chunk_indexes(&file, size)? {
            let offset = index * CHUNK_BYTES;
            let len = CHUNK_BYTES.min(size - offset);
            let data = &mut buf[..len as usize];
            file.read_exact_at(data, offset)?;
            if data.iter().all(|b| *b == 0) {
                continue;
            }
            let digest = Digest::of(salt, data);
            stats.bytes += len;
            if !stats.chunks.contains_key(&digest) {
                let stored = match store.size(&digest)? {
                    Some(stored) => stored,
                    None => {
                        let compressed = zstd::bulk::compress(data, ZSTD_LEVEL)?;
                        store.put(&digest, &compressed)?;
                        stats.new_chunks += 1;
                        stats.new_bytes += compressed.len() as u64;
                        compressed.len() as u64
                    }
                };
                stats.chunks.insert(digest, stored);
            }
            chunks.push(Chunk { offset, len, digest });
        }
        files.push(PackedFile {
            path: rel,
            mode: meta.permissions().mode() & 0o7777,
            size,
            chunks,
        });
    }
    Ok((Pack { version: PACK_VERSION, files }, stats))
}

/// Writes the pack's files under `dir` (which must not hold them yet), checking every
/// chunk against its digest.
pub fn unpack(store: &dyn BlobStore, salt: &[u8], pack: &Pack, dir: &Path) -> io::Result<()> {
    if pack.version != PACK_VERSION {
        return Err(io::Error::other(format!("pack version {} is unknown", pack.version)));
    }
    for packed in &pack.files {
        if packed.path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(io::Error::other(format!("bad path in pack: {:?}", packed.path)));
        }
        let path = dir.join(&packed.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(packed.mode)
            .open(&path)?;
        file.set_len(packed.size)?;
        for chunk in &packed.chunks {
            let data = zstd::bulk::decompress(&store.get(&chunk.digest)?, chunk.len as usize)?;
            if data.len() as u64 != chunk.len || Digest::of(salt, &data) != chunk.digest {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("chunk {} of {} is damaged", chunk.digest, packed.path),
                ));
            }
            file.write_all_at(&data, chunk.offset)?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(packed.mode))?;
    }
    Ok(())
}

/// Regular files under `dir`, relative, sorted.
fn walk(dir: &Path) -> io::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let name = entry.file_name().into_string().map_err(|name| {
                io::Error::other(format!("{} is not UTF-8", Path::new(&name).display()))
            })?;
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                found.push(path);
            } else {
                return Err(io::Error::other(format!("{path} is not a regular file")));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The indexes of the chunks that hold data (holes skipped where the filesystem says).
fn chunk_indexes(file: &File, size: u64) -> io::Result<BTreeSet<u64>> {
    let mut indexes = BTreeSet::new();
    let mut offset: i64 = 0;
    while (offset as u64) < size {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(file.as_raw_fd(), offset, libc::SEEK_DATA) };
        if data < 0 {
            match io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ENXIO) => break,
                e => return Err(e),
            }
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = (hole as u64).min(size);
        if end > data as u64 {
            indexes.extend(data as u64 / CHUNK_BYTES..=(end - 1) / CHUNK_BYTES);
        }
        offset = hole;
    }
    Ok(indexes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalBlobs;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("faas-blobs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn packs_dedups_and_restores_sparse_files() {
        let root = temp("pack");
        let store = LocalBlobs::open(&root.join("blobs")).expect("store");
        let source = root.join("source");
        std::fs::create_dir_all(source.join("images")).expect("dir");
        // A sparse file: 1 MiB of data after an 8 MiB hole, and a repeated chunk.
        let sparse = File::create(source.join("disk.img")).expect("create");
        sparse.set_len(16 << 20).expect("len");
        let block: Vec<u8> = (0..CHUNK_BYTES).map(|i| (i % 251) as u8).collect();
        for i in 0..4 {
            sparse.write_all_at(&block, (8 << 20) + i * CHUNK_BYTES).expect("write");
        }
        std::fs::write(source.join("images/pages-1.img"), b"pages").expect("write");
        let (pack, stats) = pack(&store, b"tenant-a", &source).expect("pack");
        assert_eq!(pack.files.len(), 2);
        assert_eq!(stats.bytes, 4 * CHUNK_BYTES + 5);
        // Four equal chunks are stored once.
        assert_eq!(stats.new_chunks, 2);
        assert_eq!(stats.chunks.len(), 2);
        assert!(stats.new_bytes < CHUNK_BYTES, "compressed: {}", stats.new_bytes);
        // Packing again adds nothing; another salt shares nothing.
        let (again, stats) = super::pack(&store, b"tenant-a", &source).expect("pack");
        assert_eq!((again == pack, stats.new_chunks), (true, 0));
        assert_eq!(super::pack(&store, b"tenant-b", &source).expect("pack").1.new_chunks, 2);

        let target = root.join("target");
        unpack(&store, b"tenant-a", &pack, &target).expect("unpack");
        let disk = std::fs::read(target.join("disk.img")).expect("read");
        assert_eq!(disk.len(), 16 << 20);
        assert_eq!(disk, std::fs::read(source.join("disk.img")).expect("read"));
        assert_eq!(std::fs::read(target.join("images/pages-1.img")).expect("read"), b"pages");
        // The wrong salt does not verify.
        assert!(unpack(&store, b"tenant-b", &pack, &root.join("other")).is_err());
        let json = serde_json::to_string(&pack).expect("json");
        assert_eq!(serde_json::from_str::<Pack>(&json).expect("parse"), pack);
        assert_eq!(store.list().expect("list").len(), 4);
        std::fs::remove_dir_all(&root).ok();
    }
}
