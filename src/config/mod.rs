//! Configuration: `strongbox.toml` plus `STRONGBOX_*` environment overrides (nested keys
//! joined by `__`), parsed once into types at the edge (SPEC §3).
//!
//! Secrets are never read into this struct from the file in production: a provider's
//! client secret comes from the environment variable its `client_secret_env` names or the
//! file `client_secret_file` names, resolved only when needed. An inline `client_secret`
//! is tolerated for plain-http development and refused when `public_url` is https.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::crypto::Cipher;
use crate::secret::ClientSecret;
use crate::vault::{DEFAULT_MAX_WRAPS, VaultSettings};

mod rules;
use rules::RawLimits;
pub use rules::{AdminRule, ForwardedHeader, Limits};

/// The default config file, read when present.
pub const DEFAULT_CONFIG_FILE: &str = "strongbox.toml";

/// A configuration problem, stated for a person.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    NotFound(String),
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid {key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// The parsed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub public_url: String,
    /// `public_url` is https: production guards apply and cookies are Secure.
    pub https: bool,
    pub listen: SocketAddr,
    pub database_url: String,
    pub keys_dir: PathBuf,
    pub policies_dir: PathBuf,
    pub admins: Vec<AdminRule>,
    pub vault: VaultSettings,
    /// Seconds.
    pub session_idle_timeout: i64,
    /// Seconds.
    pub session_absolute_timeout: i64,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Seconds a call to a provider's token, userinfo, discovery, JWKS or revocation
    /// endpoint may take (`provider_timeout`, default 10s).
    pub provider_timeout: i64,
    /// Request rate limits (`[limits]`).
    pub limits: Limits,
    /// Seconds an agent's grant (SPEC §11) lasts after the user approved it
    /// (`[agents] grant_lifetime`, default 90 days).
    pub grant_lifetime: i64,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub tools: BTreeMap<String, ToolConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_public_url")]
    public_url: String,
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_database_url")]
    database_url: String,
    #[serde(default = "default_keys_dir")]
    keys_dir: PathBuf,
    #[serde(default = "default_policies_dir")]
    policies_dir: PathBuf,
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    vault: RawVault,
    #[serde(default)]
    session: RawSession,
    #[serde(default)]
    log: RawLog,
    #[serde(default = "default_provider_timeout")]
    provider_timeout: DurationText,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    agents: RawAgents,
    /// Replaced by `[limits]`; kept only to name its successor when an old file sets it.
    #[serde(default)]
    agent_rate_limit: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    tools: BTreeMap<String, ToolConfig>,
}

fn default_public_url() -> String {
    "http://127.0.0.1:8080".into()
}
fn default_provider_timeout() -> DurationText {
    DurationText::Text("10s".into())
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_database_url() -> String {
    "sqlite://data/strongbox.db".into()
}
fn default_keys_dir() -> PathBuf {
    "keys".into()
}
fn default_policies_dir() -> PathBuf {
    "policies".into()
}

/// A duration as written in config: `90d`, `30m`, `3s`, or a bare number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DurationText {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    #[serde(default = "default_cipher")]
    cipher: String,
    #[serde(default = "default_rotation")]
    rotation_period: DurationText,
    #[serde(default = "default_max_wraps")]
    max_wraps_per_kek: i64,
}

impl Default for RawVault {
    fn default() -> Self {
        RawVault {
            cipher: default_cipher(),
            rotation_period: default_rotation(),
            max_wraps_per_kek: default_max_wraps(),
        }
    }
}

fn default_cipher() -> String {
    "aes-256-gcm".into()
}
fn default_rotation() -> DurationText {
    DurationText::Text("90d".into())
}
fn default_max_wraps() -> i64 {
    DEFAULT_MAX_WRAPS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    #[serde(default = "default_idle")]
    idle_timeout: DurationText,
    #[serde(default = "default_absolute")]
    absolute_timeout: DurationText,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgents {
    #[serde(default = "default_grant_lifetime")]
    grant_lifetime: DurationText,
}

impl Default for RawAgents {
    fn default() -> Self {
        RawAgents {
            grant_lifetime: default_grant_lifetime(),
        }
    }
}

fn default_grant_lifetime() -> DurationText {
    DurationText::Text("90d".into())
}

impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            idle_timeout: default_idle(),
            absolute_timeout: default_absolute(),
        }
    }
}

fn default_idle() -> DurationText {
    DurationText::Text("30m".into())
}
fn default_absolute() -> DurationText {
    DurationText::Text("7d".into())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    level: Option<String>,
}

/// A `[providers.NAME]` table: catalogue overrides and client credentials.
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: Option<String>,
    pub client_id: Option<String>,
    client_secret: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub login: bool,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub userinfo_url: Option<String>,
    pub revocation_url: Option<String>,
    pub issuer: Option<String>,
    pub jwks_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// The name shown on the pages (defaults to the catalogue's, or the entry's name).
    pub display_name: Option<String>,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .field("client_secret_env", &self.client_secret_env)
            .field("client_secret_file", &self.client_secret_file)
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

impl ProviderConfig {
    /// True when the secret is written in the config itself.
    pub fn has_inline_secret(&self) -> bool {
        self.client_secret.is_some()
    }

    /// Resolves the client secret from env, file or (development only) inline.
    pub fn client_secret(&self, name: &str) -> Result<Option<ClientSecret>, ConfigError> {
        if let Some(var) = &self.client_secret_env {
            let value = std::env::var(var).map_err(|_| {
                invalid(
                    format!("providers.{name}.client_secret_env"),
                    format!("environment variable {var} is not set"),
                )
            })?;
            return Ok(Some(ClientSecret::new(value.trim().to_owned())));
        }
        if let Some(path) = &self.client_secret_file {
            let value = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    format!("providers.{name}.client_secret_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            return Ok(Some(ClientSecret::new(value.trim().to_owned())));
        }
        Ok(self.client_secret.clone().map(ClientSecret::new))
    }
}

/// A `[tools."NAME"]` table (SPEC §8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    pub provider: String,
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub query: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// What the tool does, shown to agents.
    pub description: Option<String>,
    /// Descriptions of its arguments, by name.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
}

/// Parses `90d`, `30m`, `12h`, `3s`, `2w`, `1h30m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        return (n >= 0).then_some(n);
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    (digits.is_empty() && !text.is_empty()).then_some(total)
}

fn duration(key: &str, d: &DurationText) -> Result<i64, ConfigError> {
    match d {
        DurationText::Seconds(n) => i64::try_from(*n).map_err(|_| invalid(key, "too large")),
        DurationText::Text(t) => parse_duration(t).ok_or_else(|| {
            invalid(
                key,
                format!("{t:?} is not a duration (write e.g. 90d, 30m, 3s)"),
            )
        }),
    }
}

impl Config {
    /// Reads `path` (or `strongbox.toml` if present) and the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        match path {
            Some(p) if !p.exists() => return Err(ConfigError::NotFound(p.display().to_string())),
            Some(p) => figment = figment.merge(Toml::file(p)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE));
            }
            None => {}
        }
        let env = Env::prefixed("STRONGBOX_")
            .ignore(&["root_key", "new_root_key"])
            .split("__");
        Config::from_figment(figment.merge(env))
    }

    /// Parses a TOML string alone (tests, `check` of a candidate file).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_figment(Figment::from(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let raw: RawConfig = figment
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        if raw.agent_rate_limit.is_some() {
            return Err(invalid(
                "agent_rate_limit",
                "replaced by [limits] agent_user_per_second (per agent and user) and agent_per_second (per agent)",
            ));
        }
        let https = match raw.public_url.split_once("://") {
            Some(("https", rest)) if !rest.is_empty() => true,
            Some(("http", rest)) if !rest.is_empty() => false,
            _ => return Err(invalid("public_url", "must be an http:// or https:// URL")),
        };
        let listen = raw
            .listen
            .parse()
            .map_err(|_| invalid("listen", format!("{:?} is not an address:port", raw.listen)))?;
        let cipher = Cipher::from_name(&raw.vault.cipher).ok_or_else(|| {
            invalid(
                "vault.cipher",
                "must be \"aes-256-gcm\" or \"chacha20-poly1305\"",
            )
        })?;
        if !(1..=DEFAULT_MAX_WRAPS * 2).contains(&raw.vault.max_wraps_per_kek) {
            return Err(invalid(
                "vault.max_wraps_per_kek",
                "must be between 1 and 2^32",
            ));
        }
        let log_format = match raw.log.format.as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?} is not \"human\" or \"json\""),
                ));
            }
        };
        for name in raw.providers.keys() {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    format!("providers.{name}"),
                    "provider names are letters, digits, - and _",
                ));
            }
        }
        Ok(Config {
            public_url: raw.public_url.trim_end_matches('/').to_owned(),
            https,
            listen,
            database_url: raw.database_url,
            keys_dir: raw.keys_dir,
            policies_dir: raw.policies_dir,
            admins: raw
                .admins
                .iter()
                .map(|a| AdminRule::parse(a))
                .collect::<Result<_, _>>()?,
            vault: VaultSettings {
                cipher,
                rotation_period: duration("vault.rotation_period", &raw.vault.rotation_period)?,
                max_wraps: raw.vault.max_wraps_per_kek,
            },
            session_idle_timeout: duration("session.idle_timeout", &raw.session.idle_timeout)?,
            session_absolute_timeout: duration(
                "session.absolute_timeout",
                &raw.session.absolute_timeout,
            )?,
            log_format,
            log_level: raw.log.level.unwrap_or_else(|| "info".into()),
            limits: raw.limits.parse()?,
            provider_timeout: match duration("provider_timeout", &raw.provider_timeout)? {
                0 => return Err(invalid("provider_timeout", "must be at least 1s")),
                n => n,
            },
            grant_lifetime: match duration("agents.grant_lifetime", &raw.agents.grant_lifetime)? {
                0 => return Err(invalid("agents.grant_lifetime", "must be at least 1s")),
                n => n,
            },
            providers: raw.providers,
            tools: raw.tools,
        })
    }

    /// Refusals that apply when `public_url` is https (SPEC §3). Root-key checks happen
    /// where the key is loaded.
    pub fn production_guards(&self) -> Result<(), ConfigError> {
        if !self.https {
            return Ok(());
        }
        for (name, p) in &self.providers {
            let urls = [
                &p.authorize_url,
                &p.token_url,
                &p.userinfo_url,
                &p.revocation_url,
                &p.issuer,
                &p.jwks_url,
            ];
            if let Some(url) = urls.into_iter().flatten().find(|u| !secure_endpoint(u)) {
                return Err(invalid(
                    format!("providers.{name}"),
                    format!(
                        "{url:?}: provider endpoints must be https:// when public_url is https (plain http only on loopback)"
                    ),
                ));
            }
        }
        for (name, t) in &self.tools {
            if !secure_endpoint(&t.url) {
                return Err(invalid(
                    format!("tools.\"{name}\".url"),
                    "tool URLs must be https:// when public_url is https (plain http only on loopback)",
                ));
            }
        }
        if let Some((name, _)) = self.providers.iter().find(|(_, p)| p.has_inline_secret()) {
            return Err(invalid(
                format!("providers.{name}.client_secret"),
                "inline secrets are refused when public_url is https; use client_secret_env or client_secret_file",
            ));
        }
        Ok(())
    }

    /// The database URL with any password replaced, for logs and messages.
    pub fn database_url_redacted(&self) -> String {
        redact_url(&self.database_url)
    }
}

/// Whether `url` may carry credentials from a production deployment: https, or plain
/// http to a loopback address (127.0.0.0/8, ::1, `localhost`), which never leaves the
/// machine (a local identity provider, a sidecar, a test provider).
pub fn secure_endpoint(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    match parsed.scheme() {
        "https" => true,
        "http" => match parsed.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        },
        _ => false,
    }
}

/// Replaces the password in `scheme://user:password@host/...`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((auth, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
