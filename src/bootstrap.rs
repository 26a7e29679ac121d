//! Start-up that the command line and `serve` share: open the database (with its
//! migrations) and load the root key into a vault, finishing an interrupted root-key
//! rotation on the way. Neither `cli` nor `http` is imported here, so both can call it.

use std::path::Path;
use std::sync::Arc;

use crate::audit;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::store::{Db, OpenError, kek};
use crate::vault::rootkey::{self, RootKeyError};
use crate::vault::{RootKey, RootKeySource, Vault, VaultError};

/// A command's failure: one line for stderr.
#[derive(Debug)]
pub struct CliError(pub String);

macro_rules! cli_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> Self {
                CliError(e.to_string())
            }
        }
    )*};
}
cli_error_from!(
    ConfigError,
    OpenError,
    RootKeyError,
    VaultError,
    crate::agents::AgentError,
    crate::policy::PolicyError,
    sqlx::Error,
    std::io::Error,
    audit::VerifyError
);

/// The error for a root key that is neither in the environment nor in `keys_dir`.
pub fn missing_root_key(config: &Config) -> RootKeyError {
    RootKeyError::Missing {
        path: config
            .keys_dir
            .join(rootkey::ROOT_KEY_FILE)
            .display()
            .to_string(),
    }
}

/// Connects to the configured database and applies migrations.
pub async fn open_db(config: &Config) -> Result<Db, CliError> {
    let db = Db::connect(&config.database_url).await?;
    db.migrate().await?;
    Ok(db)
}

/// Loads the root key and builds the vault. With `allow_generate`, a development
/// instance without a root key gets a fresh `keys/root.key` and a loud warning.
pub async fn open_vault(config: &Config, db: Db, allow_generate: bool) -> Result<Vault, CliError> {
    let env = std::env::var("STRONGBOX_ROOT_KEY").ok();
    let root = match rootkey::load(&config.keys_dir, env.as_deref(), config.https)? {
        Some(root) => root,
        // Generate only for an empty vault: KEKs sealed under a lost key stay lost.
        None if allow_generate && !config.https && kek::all(db.pool()).await?.is_empty() => {
            let root = rootkey::generate_file(&config.keys_dir)?;
            tracing::warn!(
                path = %config.keys_dir.join(rootkey::ROOT_KEY_FILE).display(),
                "DEVELOPMENT ONLY: generated a new root key. Anyone with this file can decrypt \
                 every stored token. In production, provide STRONGBOX_ROOT_KEY from a secret store."
            );
            root
        }
        None => return Err(missing_root_key(config).into()),
    };
    let root = finish_pending_root(&config.keys_dir, &db, root, config.https).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ok(Vault::new(db, root, config.vault, clock))
}

/// If `keys rotate-root` was killed after re-sealing but before installing the new key
/// file, the KEKs name `root.key.new`: finish the rename and use it.
async fn finish_pending_root(
    keys_dir: &Path,
    db: &Db,
    root: RootKey,
    strict: bool,
) -> Result<RootKey, CliError> {
    let RootKeySource::File(_) = root.source() else {
        return Ok(root);
    };
    let Some(primary) = kek::primary(db.pool()).await? else {
        return Ok(root);
    };
    if primary.root_key_id == root.id() {
        return Ok(root);
    }
    let pending = keys_dir.join(rootkey::PENDING_ROOT_KEY_FILE);
    match rootkey::load_file(&pending, strict)? {
        Some(new) if new.id() == primary.root_key_id => {
            let path = rootkey::install_pending(keys_dir)?;
            tracing::warn!(path = %path.display(), "completed an interrupted root key rotation");
            Ok(RootKey::new(
                crate::crypto::Key32::from_slice(new.key().reveal()).map_err(VaultError::from)?,
                RootKeySource::File(path),
            ))
        }
        _ => Ok(root),
    }
}
