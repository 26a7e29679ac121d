//! Strongbox: a credential vault and OAuth broker for AI agents.
//!
//! People connect provider accounts; Strongbox keeps their tokens sealed under rotating
//! keys ([`vault`]); only the [`executor`] ever sees a decrypted credential. Every state
//! change that matters is written to the hash-chained [`audit`] trail in the same
//! transaction. [`app`] builds the HTTP router so tests can drive it in process.
//!
//! Dependencies point one way: `http → {executor, vault, audit} → store → sqlx`; only
//! [`crypto`] names cipher crates and only [`store`] holds SQL.

#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod agents;
pub mod audit;
pub mod bootstrap;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod error;
pub mod executor;
pub mod grants;
pub mod http;
pub mod journal;
pub mod limits;
pub mod metrics;
pub mod oauth;
pub mod oidc;
pub mod outbound;
pub mod policy;
pub mod providers;
pub mod secret;
pub mod sessions;
pub mod store;
pub mod tools;
pub mod vault;

#[cfg(test)]
mod testkit;

pub use http::{AppState, app};
