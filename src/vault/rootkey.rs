//! The root key: where it comes from, how a development one is made, and how a new one
//! replaces the old on disk without a window where neither works.
//!
//! Sources, in order: the `STRONGBOX_ROOT_KEY` environment variable (base64 of 32 bytes),
//! then `keys_dir/root.key` (the same text). The key file must be readable by its owner
//! only; in production that is enforced. Key bytes never appear in an error or a log: only
//! the path and the key's fingerprint do.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::crypto::{CryptoError, Key32};

/// Name of the root key file inside `keys_dir`.
pub const ROOT_KEY_FILE: &str = "root.key";
/// A new root key waiting to replace the old one during `keys rotate-root`.
pub const PENDING_ROOT_KEY_FILE: &str = "root.key.new";

/// Where the root key was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootKeySource {
    Env,
    File(PathBuf),
}

/// The key that seals every KEK. Never printed.
#[derive(Debug)]
pub struct RootKey {
    key: Key32,
    source: RootKeySource,
}

impl RootKey {
    pub fn new(key: Key32, source: RootKeySource) -> RootKey {
        RootKey { key, source }
    }

    /// Non-secret fingerprint stored beside every KEK it seals.
    pub fn id(&self) -> String {
        self.key.fingerprint()
    }

    pub fn source(&self) -> &RootKeySource {
        &self.source
    }

    pub(crate) fn key(&self) -> &Key32 {
        &self.key
    }
}

/// Why no usable root key could be had.
#[derive(Debug, thiserror::Error)]
pub enum RootKeyError {
    #[error("{origin} is not base64 of exactly 32 bytes")]
    Malformed { origin: String },
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is readable by group or others (mode {mode:03o}); run `chmod 600 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error(
        "no root key: set STRONGBOX_ROOT_KEY (base64 of 32 random bytes) or create {path} \
         (see keys/README.md)"
    )]
    Missing { path: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate a root key: {0}")]
    Crypto(#[from] CryptoError),
}

/// Parses base64 text into a key; `origin` names the source for the error message.
pub fn parse(text: &str, origin: &str) -> Result<Key32, RootKeyError> {
    let malformed = || RootKeyError::Malformed {
        origin: origin.to_owned(),
    };
    let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| malformed())?);
    Key32::from_slice(&bytes).map_err(|_| malformed())
}

/// Loads the root key from `env` (the value of `STRONGBOX_ROOT_KEY`) or
/// `keys_dir/root.key`. With `strict`, a key file readable by group or others is refused.
/// `Ok(None)` when neither exists.
pub fn load(
    keys_dir: &Path,
    env: Option<&str>,
    strict: bool,
) -> Result<Option<RootKey>, RootKeyError> {
    if let Some(text) = env {
        let key = parse(text, "STRONGBOX_ROOT_KEY")?;
        return Ok(Some(RootKey::new(key, RootKeySource::Env)));
    }
    load_file(&keys_dir.join(ROOT_KEY_FILE), strict)
}

/// Loads a key file if it exists.
pub fn load_file(path: &Path, strict: bool) -> Result<Option<RootKey>, RootKeyError> {
    let shown = path.display().to_string();
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A missing file is "no key" only when its directory can be read at all.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && let Err(source) = fs::read_dir(dir)
                && source.kind() != std::io::ErrorKind::NotFound
            {
                return Err(RootKeyError::Unreadable {
                    path: dir.display().to_string(),
                    source,
                });
            }
            return Ok(None);
        }
        Err(source) => {
            return Err(RootKeyError::Unreadable {
                path: shown,
                source,
            });
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        if strict {
            return Err(RootKeyError::Permissions { path: shown, mode });
        }
        tracing::warn!(path = %shown, mode = format!("{mode:03o}"), "root key file is readable by group or others");
    }
    let text =
        Zeroizing::new(
            fs::read_to_string(path).map_err(|source| RootKeyError::Unreadable {
                path: shown.clone(),
                source,
            })?,
        );
    let key = parse(&text, &shown)?;
    Ok(Some(RootKey::new(
        key,
        RootKeySource::File(path.to_owned()),
    )))
}

/// Creates `keys_dir/root.key` with a fresh random key. Refuses to overwrite.
pub fn generate_file(keys_dir: &Path) -> Result<RootKey, RootKeyError> {
    let key = Key32::generate()?;
    let path = keys_dir.join(ROOT_KEY_FILE);
    write_key(&path, &key, true)?;
    Ok(RootKey::new(key, RootKeySource::File(path)))
}

/// Writes `key` to `keys_dir/root.key.new` (owner-only, synced), ready to be installed by
/// [`install_pending`] once the KEKs are re-sealed under it.
pub fn write_pending(keys_dir: &Path, key: &Key32) -> Result<PathBuf, RootKeyError> {
    let path = keys_dir.join(PENDING_ROOT_KEY_FILE);
    write_key(&path, key, false)?;
    Ok(path)
}

/// Atomically replaces `root.key` with `root.key.new`.
pub fn install_pending(keys_dir: &Path) -> Result<PathBuf, RootKeyError> {
    let from = keys_dir.join(PENDING_ROOT_KEY_FILE);
    let to = keys_dir.join(ROOT_KEY_FILE);
    fs::rename(&from, &to).map_err(|source| RootKeyError::Write {
        path: to.display().to_string(),
        source,
    })?;
    sync_dir(keys_dir)?;
    Ok(to)
}

fn write_key(path: &Path, key: &Key32, create_new: bool) -> Result<(), RootKeyError> {
    let err = |source| RootKeyError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        fs::create_dir_all(dir).map_err(err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    let mut opts = OpenOptions::new();
    opts.write(true).mode(0o600);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    let mut file = opts.open(path).map_err(err)?;
    // An existing pending file keeps its old mode through truncate; force owner-only.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    let mut text = Zeroizing::new(STANDARD.encode(key.reveal()));
    text.push('\n');
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), RootKeyError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| RootKeyError::Write {
            path: dir.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let made = generate_file(&keys).unwrap();
        let mode = fs::metadata(keys.join(ROOT_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = load(&keys, None, true).unwrap().unwrap();
        assert_eq!(made.id(), loaded.id());
        assert!(generate_file(&keys).is_err(), "never overwrites a root key");
    }

    #[test]
    fn strict_mode_refuses_loose_permissions() {
        let dir = tempfile::tempdir().unwrap();
        generate_file(dir.path()).unwrap();
        let path = dir.path().join(ROOT_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load(dir.path(), None, true),
            Err(RootKeyError::Permissions { .. })
        ));
        assert!(load(dir.path(), None, false).unwrap().is_some());
    }

    #[test]
    fn malformed_keys_are_typed_errors_without_the_value() {
        let err = load(Path::new("/nonexistent"), Some("c2hvcnQ="), false).unwrap_err();
        assert!(matches!(err, RootKeyError::Malformed { .. }));
        assert!(!err.to_string().contains("c2hvcnQ"));
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(ROOT_KEY_FILE), "not base64!").unwrap();
        fs::set_permissions(
            dir.path().join(ROOT_KEY_FILE),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert!(matches!(
            load(dir.path(), None, true),
            Err(RootKeyError::Malformed { .. })
        ));
    }

    #[test]
    fn missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), None, true).unwrap().is_none());
    }
}
