//! The one integration-test binary: drives the real `strongbox` binary and library
//! against SQLite and PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod admin;
mod aead_oracle;
mod agents;
mod browser;
mod cli;
mod connect;
mod faults;
mod grants;
mod kat;
mod leak;
mod limits;
mod oauth;
mod oidc;
mod oidc_wire;
mod quirks;
mod serve;
mod sessions;
mod support;
