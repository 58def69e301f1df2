//! Ed25519 keys: the server's host key, kept in the data directory so clients' known_hosts
//! stay valid across restarts, and the per-instance login keys it issues.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::{HashAlg, PrivateKey, PublicKey};

/// A fresh login key: the private half goes to the client once and is never stored.
pub struct IssuedKey {
    /// OpenSSH private key file content.
    pub private_key: String,
    /// `ssh-ed25519 AAAA... comment`.
    pub public_key: String,
    /// What the store keeps: `SHA256:...`.
    pub fingerprint: String,
}

fn random_key(comment: &str) -> std::io::Result<PrivateKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
    let keypair = KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed));
    PrivateKey::new(keypair, comment).map_err(std::io::Error::other)
}

pub fn fingerprint_of(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// `ssh-ed25519 AAAA...` without the comment, as a known_hosts line wants it.
pub fn public_openssh(key: &PublicKey) -> String {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh().unwrap_or_default().trim().to_owned()
}

/// A new key pair for logging into `instance_id`.
pub fn issue_key(instance_id: &str) -> std::io::Result<IssuedKey> {
    let key = random_key(&format!("faas-{instance_id}"))?;
    let private_key = key.to_openssh(LineEnding::LF).map_err(std::io::Error::other)?;
    let public_key = key.public_key().to_openssh().map_err(std::io::Error::other)?;
    Ok(IssuedKey {
        private_key: private_key.to_string(),
        public_key,
        fingerprint: fingerprint_of(key.public_key()),
    })
}

/// The host key at `path`, created (mode 0600) when missing.
pub fn load_or_create_host_key(path: &Path) -> std::io::Result<PrivateKey> {
    match std::fs::read_to_string(path) {
        Ok(pem) => PrivateKey::from_openssh(pem).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random_key("faas host key")?;
            let pem = key.to_openssh(LineEnding::LF).map_err(std::io::Error::other)?;
            // Written aside and renamed, so a crash never leaves half a key behind.
            let partial = path.with_extension("partial");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)?;
            file.write_all(pem.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&partial, path)?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_parse_back_and_match_their_fingerprint() {
        let issued = issue_key("in_test").expect("key");
        let private = PrivateKey::from_openssh(&issued.private_key).expect("private key");
        assert_eq!(fingerprint_of(private.public_key()), issued.fingerprint);
        let public = PublicKey::from_openssh(&issued.public_key).expect("public key");
        assert_eq!(fingerprint_of(&public), issued.fingerprint);
        assert!(issued.public_key.starts_with("ssh-ed25519 "));
        assert_ne!(issue_key("in_test").expect("key").fingerprint, issued.fingerprint);
    }

    #[test]
    fn the_host_key_is_created_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("faas-ssh-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("host_key");
        let first = load_or_create_host_key(&path).expect("create");
        let second = load_or_create_host_key(&path).expect("load");
        assert_eq!(fingerprint_of(first.public_key()), fingerprint_of(second.public_key()));
        let mode = std::fs::metadata(&path).expect("meta").permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        std::fs::remove_dir_all(dir).ok();
    }
}
