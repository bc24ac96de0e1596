//! A node's key files: its static X25519 key pair ([`Identity`], from which its [`PeerId`] is
//! derived), the optional shared secret of a private swarm ([`SwarmKey`]) and the optional list
//! of the peer ids it lets connect ([`AllowList`]).
//!
//! Both are 32 secret bytes, stored as one line of 64 hex digits in a file only its owner may
//! read (mode 0600). A file is written whole or not at all: the bytes go to a temporary file
//! beside it, which is then linked to the final name, so a reader never sees half a key and
//! two processes creating the same file at once end up with the same key.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use curve25519_dalek::montgomery::MontgomeryPoint;
use p2p_core::{Digest, PeerId};
use rand::RngCore;

use crate::error::NetError;

/// Bytes of a secret (a private key or a swarm key).
pub const SECRET_BYTES: usize = 32;
/// The file mode of a key file: read and write for its owner only.
const KEY_FILE_MODE: u32 = 0o600;

/// A node's static key pair. Its peer id is the first 16 bytes of the SHA-256 of the public
/// key, so an id can only be used by whoever holds the private key (the transport's handshake
/// proves it on every connection).
#[derive(Clone)]
pub struct Identity {
    private: [u8; SECRET_BYTES],
    public: [u8; SECRET_BYTES],
}

/// The secret shared by the nodes of a private swarm: a node without it cannot finish a
/// handshake with one that has it.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmKey([u8; SECRET_BYTES]);

impl Identity {
    /// A new random key pair (from the OS's randomness).
    pub fn generate() -> Identity {
        Identity::from_private(random_secret())
    }

    /// The key pair whose private key is `private`.
    pub fn from_private(private: [u8; SECRET_BYTES]) -> Identity {
        let public = MontgomeryPoint::mul_base_clamped(private).to_bytes();
        Identity { private, public }
    }

    /// Reads the key pair in `path`, or creates it there (mode 0600) when the file does not
    /// exist yet.
    pub fn load_or_create(path: &Path) -> Result<Identity, NetError> {
        match read_secret(path) {
            Ok(private) => Ok(Identity::from_private(private)),
            Err(NetError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
                let identity = Identity::generate();
                write_secret(path, &identity.private)?;
                // Another process may have created the file first: its key is the one kept.
                read_secret(path).map(Identity::from_private)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes a new key pair to `path` (mode 0600); an existing file is never replaced.
    pub fn create(path: &Path) -> Result<Identity, NetError> {
        let identity = Identity::generate();
        write_new_secret(path, &identity.private)?;
        Ok(identity)
    }

    /// The private key, for the handshake.
    pub fn private_key(&self) -> &[u8; SECRET_BYTES] {
        &self.private
    }

    /// The public key.
    pub fn public_key(&self) -> &[u8; SECRET_BYTES] {
        &self.public
    }

    /// The peer id this key pair proves.
    pub fn peer_id(&self) -> PeerId {
        peer_id_of(&self.public)
    }
}

/// The peer id of the holder of `public_key`: the first 16 bytes of its SHA-256.
pub fn peer_id_of(public_key: &[u8]) -> PeerId {
    let digest = Digest::of(public_key);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.0[..16]);
    PeerId(id)
}

/// Shows the id only: the private key never reaches a log.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("peer_id", &self.peer_id()).finish_non_exhaustive()
    }
}

impl SwarmKey {
    /// Reads the swarm key in `path`.
    pub fn load(path: &Path) -> Result<SwarmKey, NetError> {
        read_secret(path).map(SwarmKey)
    }

    /// Writes a new random swarm key to `path` (mode 0600); an existing file is never replaced.
    pub fn create(path: &Path) -> Result<SwarmKey, NetError> {
        let key = SwarmKey(random_secret());
        write_new_secret(path, &key.0)?;
        Ok(key)
    }

    /// The key's bytes, for the handshake.
    pub fn as_bytes(&self) -> &[u8; SECRET_BYTES] {
        &self.0
    }
}

/// Never shows the secret.
impl fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwarmKey(..)")
    }
}

/// The peer ids a node lets connect (`--allow FILE`): one id (32 hex digits) a line; blank
/// lines and text after `#` are ignored. Not secret: ids are public.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(BTreeSet<PeerId>);

impl AllowList {
    /// Reads the list in `path`; a line that is no peer id is an error naming it.
    pub fn load(path: &Path) -> Result<AllowList, NetError> {
        let text = fs::read_to_string(path).map_err(NetError::io("read", path))?;
        AllowList::parse(&text).map_err(|reason| NetError::Corrupt { path: path.to_owned(), reason })
    }

    /// The list in `text` (see the type's docs); `Err` names the first bad line.
    pub fn parse(text: &str) -> Result<AllowList, String> {
        let mut ids = BTreeSet::new();
        for (number, line) in text.lines().enumerate() {
            let id = line.split('#').next().unwrap_or_default().trim();
            if id.is_empty() {
                continue;
            }
            ids.insert(parse_peer_id(id).map_err(|e| format!("line {}: {e}", number + 1))?);
        }
        Ok(AllowList(ids))
    }

    /// Whether `peer_id` is on the list.
    pub fn allows(&self, peer_id: PeerId) -> bool {
        self.0.contains(&peer_id)
    }
}

/// A peer id as printed: 32 hex digits.
pub fn parse_peer_id(text: &str) -> Result<PeerId, String> {
    let bytes = hex::decode(text).ok().and_then(|bytes| <[u8; 16]>::try_from(bytes).ok());
    bytes.map(PeerId).ok_or_else(|| format!("{text:?} is not a peer id (32 hex digits)"))
}

fn random_secret() -> [u8; SECRET_BYTES] {
    let mut secret = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    secret
}

/// Reads a key file: 64 hex digits, surrounding white space allowed. A file others may read
/// is used, with a warning.
fn read_secret(path: &Path) -> Result<[u8; SECRET_BYTES], NetError> {
    let text = fs::read_to_string(path).map_err(NetError::io("read", path))?;
    let corrupt = |reason: &str| NetError::Corrupt { path: path.to_owned(), reason: reason.to_owned() };
    let bytes = hex::decode(text.trim()).map_err(|_| corrupt("not a key: expected 64 hex digits"))?;
    let secret = <[u8; SECRET_BYTES]>::try_from(bytes).map_err(|_| corrupt("not a key: expected 64 hex digits"))?;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!("{}: the key file may be read by others (chmod 600 it)", path.display());
        }
    }
    Ok(secret)
}

/// Writes a key file that must not exist yet.
fn write_new_secret(path: &Path, secret: &[u8; SECRET_BYTES]) -> Result<(), NetError> {
    if path.exists() {
        let error = io::Error::new(io::ErrorKind::AlreadyExists, "a key file is never replaced");
        return Err(NetError::Io { action: "create", path: path.to_owned(), error });
    }
    write_secret(path, secret)
}

/// Writes `secret` (as hex digits) to `path` unless the file exists already (then the existing
/// one stays): a temporary file of mode 0600 beside it, synced, then hard-linked to `path`, so
/// a crash never leaves a partly written secret under its name.
pub(crate) fn write_secret(path: &Path, secret: &[u8]) -> Result<(), NetError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(KEY_FILE_MODE).open(&temporary)?;
        writeln!(file, "{}", hex::encode(secret))?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| match fs::hard_link(&temporary, path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    // The temporary name is only a step: it goes whether or not the link was made.
    fs::remove_file(&temporary).ok();
    linked.map_err(NetError::io("create", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_private_and_gives_the_same_id_when_read_back() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("node.key");
        let created = Identity::load_or_create(&path).expect("created");
        let mode = fs::metadata(&path).expect("written").permissions().mode();
        assert_eq!(mode & 0o777, KEY_FILE_MODE, "only its owner reads it");
        let loaded = Identity::load_or_create(&path).expect("read back");
        assert_eq!(loaded.peer_id(), created.peer_id());
        assert_eq!(loaded.public_key(), created.public_key());
        assert_ne!(Identity::generate().peer_id(), created.peer_id(), "another key, another id");
    }

    #[test]
    fn an_existing_key_file_is_never_replaced_and_garbage_is_refused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("swarm.key");
        let key = SwarmKey::create(&path).expect("created");
        assert!(SwarmKey::create(&path).is_err(), "a second create refuses");
        assert_eq!(SwarmKey::load(&path).expect("read back"), key);
        fs::write(&path, "not hex\n").expect("written");
        assert!(matches!(SwarmKey::load(&path), Err(NetError::Corrupt { .. })));
    }

    #[test]
    fn an_allow_list_takes_one_id_a_line_with_comments_and_names_a_bad_line() {
        let (a, b) = (Identity::generate().peer_id(), Identity::generate().peer_id());
        let list = AllowList::parse(&format!("# the team\n{a}\n\n  {b}  # laptop\n")).expect("valid");
        assert!(list.allows(a) && list.allows(b));
        assert!(!list.allows(Identity::generate().peer_id()));
        let err = AllowList::parse(&format!("{a}\n{}\n", &b.to_string()[..30])).expect_err("a short id");
        assert!(err.starts_with("line 2: "), "{err}");
    }

    #[test]
    fn the_peer_id_is_the_head_of_the_public_keys_hash() {
        let identity = Identity::from_private([5; SECRET_BYTES]);
        let digest = Digest::of(identity.public_key());
        assert_eq!(identity.peer_id().0[..], digest.0[..16]);
    }
}
