//! The executor: the only code that may turn a sealed credential into plaintext tokens.
//!
//! [`OpenCapability`] is the proof the vault asks for in [`crate::vault::Vault::open`]. Its
//! field is private and its only constructor is visible to this module alone, so outside
//! `executor/` no code can obtain one — the compiler enforces the rule that was otherwise
//! a convention. A reviewer checks it with
//! `grep -rn "OpenCapability" src`: it appears here and in the vault's `open` signature.
//! The tool runner and credential release (SPEC §8, §5) live here and hold the capability.

use std::sync::Arc;

mod broker;
mod disconnect;
mod refresh;
mod revoke;

pub use broker::{Broker, Caller, LAST_USE_STEP, REFRESH_MARGIN, Released, ToolOutput};
pub use revoke::{Revoked, revoke_tokens};

use crate::vault::{SealedCredential, TokenSet, Vault, VaultError};

/// Permission to decrypt a credential. Constructible only inside `crate::executor`.
#[derive(Debug)]
pub struct OpenCapability(());

impl OpenCapability {
    pub(in crate::executor) fn new() -> OpenCapability {
        OpenCapability(())
    }
}

/// Runs work that needs a user's decrypted credential.
#[derive(Debug)]
pub struct Executor {
    vault: Arc<Vault>,
    cap: OpenCapability,
}

impl Executor {
    pub fn new(vault: Arc<Vault>) -> Executor {
        Executor {
            vault,
            cap: OpenCapability::new(),
        }
    }

    /// Opens `sealed` and lends the token set to `f` for the duration of the call; the
    /// plaintext is zeroized when the call returns.
    pub async fn with_tokens<T>(
        &self,
        sealed: &SealedCredential,
        f: impl FnOnce(&TokenSet) -> T,
    ) -> Result<T, VaultError> {
        let tokens = self.vault.open(&self.cap, sealed).await?;
        Ok(f(&tokens))
    }
}
