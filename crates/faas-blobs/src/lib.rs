//! Where snapshot data lives for good: chunks named by the SHA-256 of their content
//! (salted per tenant, so that one tenant's chunks never match another's), compressed with
//! zstd, each stored once however many snapshots hold it. [`BlobStore`] is the storage;
//! [`LocalBlobs`] keeps chunks as files on local disk, and an S3-compatible store can
//! implement the same trait. [`pack`] turns a directory into chunks and a [`Pack`] (the
//! versioned list of its files and their chunks), and back.

mod pack;

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use pack::{CHUNK_BYTES, Chunk, PACK_VERSION, Pack, PackStats, PackedFile, pack, unpack};

/// A chunk's name: SHA-256 of (salt, content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(salt: &[u8], content: &[u8]) -> Self {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        hasher.update((salt.len() as u64).to_le_bytes());
        hasher.update(salt);
        hasher.update(content);
        Self(hasher.finalize().into())
    }

    pub fn parse(hex_text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::parse(&text).ok_or_else(|| serde::de::Error::custom("a 64-digit hex digest"))
    }
}

/// Storage of compressed chunks by digest. Calls block: callers run them off the async
/// runtime. Writing a digest that exists is allowed and changes nothing.
pub trait BlobStore: Send + Sync {
    /// The stored (compressed) size of the chunk, if it is stored.
    fn size(&self, digest: &Digest) -> io::Result<Option<u64>>;
    /// Stores `compressed` under `digest`, durably, before it returns.
    fn put(&self, digest: &Digest, compressed: &[u8]) -> io::Result<()>;
    fn get(&self, digest: &Digest) -> io::Result<Vec<u8>>;
    /// Removing a missing chunk is not an error.
    fn remove(&self, digest: &Digest) -> io::Result<()>;
    /// Every stored digest (to find chunks no record holds after a crash).
    fn list(&self) -> io::Result<Vec<Digest>>;
}

/// Chunks as files: `<root>/<first two hex digits>/<digest>`.
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    pub fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(Self { root: root.to_owned() })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        let name = digest.to_string();
        self.root.join(&name[..2]).join(name)
    }
}

impl BlobStore for LocalBlobs {
    fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match std::fs::metadata(self.path(digest)) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put(&self, digest: &Digest, compressed: &[u8]) -> io::Result<()> {
        let path = self.path(digest);
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir)?;
        // Written aside and renamed: a crash never leaves a torn chunk under its name.
        let partial = path.with_extension("partial");
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(compressed)?;
        file.sync_all()?;
        std::fs::rename(&partial, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    fn get(&self, digest: &Digest) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(digest))
    }

    fn remove(&self, digest: &Digest) -> io::Result<()> {
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn list(&self) -> io::Result<Vec<Digest>> {
        let mut digests = Vec::new();
        for dir in std::fs::read_dir(&self.root)? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(dir.path())? {
                let name = entry?.file_name();
                match name.to_str().and_then(Digest::parse) {
                    Some(digest) => digests.push(digest),
                    // A chunk a crash left half written.
                    None => drop(std::fs::remove_file(dir.path().join(&name))),
                }
            }
        }
        Ok(digests)
    }
}
