//! The provider catalogue (SPEC §4): built-in providers as data, merged with `[providers.*]`
//! configuration into one [`Provider`] per name. No code path is specific to a provider;
//! what differs between them is a field here.
//!
//! Quirks recorded per entry: the scope separator, the client authentication method, extra
//! authorize parameters (Google's `access_type=offline&prompt=consent`), whether the token
//! endpoint must be asked for JSON (GitHub answers forms otherwise), whether refresh needs
//! `scope` (Microsoft), and whether refresh tokens rotate. A refresh response without a
//! refresh token always keeps the old one.

use std::collections::BTreeMap;

use crate::config::{Config, ConfigError, ProviderConfig};

/// How the provider identifies users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// OpenID Connect: ID tokens, discovery and JWKS.
    Oidc,
    /// Plain OAuth 2.0: identity from a userinfo endpoint.
    OAuth2,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Oidc => "oidc",
            Kind::OAuth2 => "oauth2",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "oidc" => Some(Kind::Oidc),
            "oauth2" => Some(Kind::OAuth2),
            _ => None,
        }
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`).
    Basic,
    /// Form fields (`client_secret_post`).
    Post,
}

/// Where the user's subject, email and name are found in ID-token claims or userinfo JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimNames {
    pub subject: &'static str,
    pub email: &'static str,
    pub name: &'static str,
    /// The boolean userinfo field by which this provider says the email is verified;
    /// `None` when it says nothing of the kind, so its emails never count as verified
    /// (for `admins` entries by email). A field of the same name elsewhere means nothing.
    pub email_verified: Option<&'static str>,
}

impl ClaimNames {
    /// Whether a userinfo document says the email is verified, in this provider's field.
    pub fn says_email_verified(&self, userinfo: &serde_json::Value) -> bool {
        self.email_verified
            .is_some_and(|k| userinfo.get(k).and_then(serde_json::Value::as_bool) == Some(true))
    }
}

const OIDC_CLAIMS: ClaimNames = ClaimNames {
    subject: "sub",
    email: "email",
    name: "name",
    email_verified: Some("email_verified"),
};

/// Behaviour that differs between providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quirks {
    /// Send `Accept: application/json` to the token endpoint.
    pub token_wants_json_accept: bool,
    /// Send `scope` again with a refresh-token grant.
    pub refresh_needs_scope: bool,
    /// A refresh may return a new refresh token, which must replace the old one atomically.
    pub rotates_refresh_tokens: bool,
}

/// One built-in catalogue entry.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub name: &'static str,
    pub display_name: &'static str,
    pub kind: Kind,
    pub issuer: Option<&'static str>,
    pub authorize_url: &'static str,
    pub token_url: &'static str,
    pub userinfo_url: Option<&'static str>,
    pub revocation_url: Option<&'static str>,
    pub jwks_url: Option<&'static str>,
    pub scopes: &'static [&'static str],
    pub scope_separator: &'static str,
    pub client_auth: ClientAuth,
    pub authorize_params: &'static [(&'static str, &'static str)],
    pub claims: ClaimNames,
    pub quirks: Quirks,
}

/// The built-in catalogue.
pub const CATALOGUE: &[Entry] = &[
    Entry {
        name: "google",
        display_name: "Google",
        kind: Kind::Oidc,
        issuer: Some("https://accounts.google.com"),
        authorize_url: "https://accounts.google.com/o/oauth2/v2/auth",
        token_url: "https://oauth2.googleapis.com/token",
        userinfo_url: Some("https://openidconnect.googleapis.com/v1/userinfo"),
        revocation_url: Some("https://oauth2.googleapis.com/revoke"),
        jwks_url: Some("https://www.googleapis.com/oauth2/v3/certs"),
        scopes: &["openid", "email", "profile"],
        scope_separator: " ",
        client_auth: ClientAuth::Post,
        authorize_params: &[("access_type", "offline"), ("prompt", "consent")],
        claims: OIDC_CLAIMS,
        quirks: Quirks {
            token_wants_json_accept: false,
            refresh_needs_scope: false,
            rotates_refresh_tokens: false,
        },
    },
    Entry {
        name: "microsoft",
        display_name: "Microsoft",
        kind: Kind::Oidc,
        issuer: Some("https://login.microsoftonline.com/common/v2.0"),
        authorize_url: "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        token_url: "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        userinfo_url: Some("https://graph.microsoft.com/oidc/userinfo"),
        revocation_url: None,
        jwks_url: Some("https://login.microsoftonline.com/common/discovery/v2.0/keys"),
        scopes: &["openid", "email", "profile", "offline_access"],
        scope_separator: " ",
        client_auth: ClientAuth::Post,
        authorize_params: &[],
        claims: OIDC_CLAIMS,
        quirks: Quirks {
            token_wants_json_accept: false,
            refresh_needs_scope: true,
            rotates_refresh_tokens: true,
        },
    },
    Entry {
        name: "discord",
        display_name: "Discord",
        kind: Kind::OAuth2,
        issuer: None,
        authorize_url: "https://discord.com/oauth2/authorize",
        token_url: "https://discord.com/api/oauth2/token",
        userinfo_url: Some("https://discord.com/api/users/@me"),
        revocation_url: Some("https://discord.com/api/oauth2/token/revoke"),
        jwks_url: None,
        scopes: &["identify", "email"],
        scope_separator: " ",
        client_auth: ClientAuth::Basic,
        authorize_params: &[],
        claims: ClaimNames {
            subject: "id",
            email: "email",
            name: "username",
            // Discord's `verified` is about the account's email address.
            email_verified: Some("verified"),
        },
        quirks: Quirks {
            token_wants_json_accept: false,
            refresh_needs_scope: false,
            rotates_refresh_tokens: true,
        },
    },
    Entry {
        name: "spotify",
        display_name: "Spotify",
        kind: Kind::OAuth2,
        issuer: None,
        authorize_url: "https://accounts.spotify.com/authorize",
        token_url: "https://accounts.spotify.com/api/token",
        userinfo_url: Some("https://api.spotify.com/v1/me"),
        revocation_url: None,
        jwks_url: None,
        scopes: &["user-read-email", "user-read-private"],
        scope_separator: " ",
        client_auth: ClientAuth::Basic,
        authorize_params: &[],
        claims: ClaimNames {
            subject: "id",
            email: "email",
            name: "display_name",
            email_verified: None,
        },
        quirks: Quirks {
            token_wants_json_accept: false,
            refresh_needs_scope: false,
            rotates_refresh_tokens: true,
        },
    },
    Entry {
        name: "github",
        display_name: "GitHub",
        kind: Kind::OAuth2,
        issuer: None,
        authorize_url: "https://github.com/login/oauth/authorize",
        token_url: "https://github.com/login/oauth/access_token",
        userinfo_url: Some("https://api.github.com/user"),
        revocation_url: None,
        jwks_url: None,
        scopes: &["read:user", "user:email"],
        scope_separator: " ",
        client_auth: ClientAuth::Post,
        authorize_params: &[],
        claims: ClaimNames {
            subject: "id",
            email: "email",
            name: "login",
            // `/user` shows the public email and says nothing of its verification.
            email_verified: None,
        },
        quirks: Quirks {
            token_wants_json_accept: true,
            refresh_needs_scope: false,
            rotates_refresh_tokens: true,
        },
    },
    Entry {
        name: "slack",
        display_name: "Slack",
        kind: Kind::Oidc,
        issuer: Some("https://slack.com"),
        authorize_url: "https://slack.com/openid/connect/authorize",
        token_url: "https://slack.com/api/openid.connect.token",
        userinfo_url: Some("https://slack.com/api/openid.connect.userInfo"),
        revocation_url: None,
        jwks_url: Some("https://slack.com/openid/connect/keys"),
        scopes: &["openid", "email", "profile"],
        scope_separator: " ",
        client_auth: ClientAuth::Post,
        authorize_params: &[],
        claims: OIDC_CLAIMS,
        quirks: Quirks {
            token_wants_json_accept: false,
            refresh_needs_scope: false,
            rotates_refresh_tokens: false,
        },
    },
];

/// A provider as this deployment uses it: a catalogue entry (or a generic kind) with the
/// configuration's overrides applied.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub display_name: String,
    pub kind: Kind,
    pub builtin: bool,
    pub issuer: Option<String>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub userinfo_url: Option<String>,
    pub revocation_url: Option<String>,
    pub jwks_url: Option<String>,
    pub scopes: Vec<String>,
    pub scope_separator: String,
    pub client_auth: ClientAuth,
    pub authorize_params: Vec<(String, String)>,
    pub claims: ClaimNames,
    pub quirks: Quirks,
    /// Client credentials are configured.
    pub configured: bool,
    pub client_id: Option<String>,
    /// May be used to sign in (not only to connect).
    pub login: bool,
}

fn owned(s: Option<&str>) -> Option<String> {
    s.map(str::to_owned)
}

fn invalid(name: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("providers.{name}"),
        reason: reason.into(),
    }
}

impl Provider {
    fn from_entry(e: &Entry) -> Provider {
        Provider {
            name: e.name.to_owned(),
            display_name: e.display_name.to_owned(),
            kind: e.kind,
            builtin: true,
            issuer: owned(e.issuer),
            authorize_url: Some(e.authorize_url.to_owned()),
            token_url: Some(e.token_url.to_owned()),
            userinfo_url: owned(e.userinfo_url),
            revocation_url: owned(e.revocation_url),
            jwks_url: owned(e.jwks_url),
            scopes: e.scopes.iter().map(|s| (*s).to_owned()).collect(),
            scope_separator: e.scope_separator.to_owned(),
            client_auth: e.client_auth,
            authorize_params: e
                .authorize_params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            claims: e.claims,
            quirks: e.quirks,
            configured: false,
            client_id: None,
            login: false,
        }
    }

    /// A provider outside the catalogue, of a generic kind.
    fn generic(name: &str, kind: Kind) -> Provider {
        Provider {
            name: name.to_owned(),
            display_name: name.to_owned(),
            kind,
            builtin: false,
            issuer: None,
            authorize_url: None,
            token_url: None,
            userinfo_url: None,
            revocation_url: None,
            jwks_url: None,
            scopes: match kind {
                Kind::Oidc => vec!["openid".into(), "email".into(), "profile".into()],
                Kind::OAuth2 => Vec::new(),
            },
            scope_separator: " ".into(),
            client_auth: ClientAuth::Basic,
            authorize_params: Vec::new(),
            claims: OIDC_CLAIMS,
            quirks: Quirks::default(),
            configured: false,
            client_id: None,
            login: false,
        }
    }

    fn apply(&mut self, c: &ProviderConfig) -> Result<(), ConfigError> {
        let set = |slot: &mut Option<String>, v: &Option<String>| {
            if let Some(v) = v {
                *slot = Some(v.clone());
            }
        };
        set(&mut self.issuer, &c.issuer);
        set(&mut self.authorize_url, &c.authorize_url);
        set(&mut self.token_url, &c.token_url);
        set(&mut self.userinfo_url, &c.userinfo_url);
        set(&mut self.revocation_url, &c.revocation_url);
        set(&mut self.jwks_url, &c.jwks_url);
        if let Some(scopes) = &c.scopes {
            self.scopes.clone_from(scopes);
        }
        if let Some(d) = &c.display_name {
            self.display_name.clone_from(d);
        }
        for url in [
            &self.issuer,
            &self.authorize_url,
            &self.token_url,
            &self.userinfo_url,
            &self.revocation_url,
            &self.jwks_url,
        ]
        .into_iter()
        .flatten()
        {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(
                    &self.name,
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
        }
        self.client_id.clone_from(&c.client_id);
        self.configured = c.client_id.is_some();
        self.login = c.login;
        match self.kind {
            Kind::Oidc if self.issuer.is_none() => {
                Err(invalid(&self.name, "an oidc provider needs `issuer`"))
            }
            Kind::OAuth2 if self.authorize_url.is_none() || self.token_url.is_none() => {
                Err(invalid(
                    &self.name,
                    "an oauth2 provider needs `authorize_url` and `token_url`",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Every provider: the whole catalogue, plus configured providers outside it.
pub fn resolve(config: &Config) -> Result<BTreeMap<String, Provider>, ConfigError> {
    let mut out: BTreeMap<String, Provider> = CATALOGUE
        .iter()
        .map(|e| (e.name.to_owned(), Provider::from_entry(e)))
        .collect();
    for (name, c) in &config.providers {
        let kind = c
            .kind
            .as_deref()
            .map(|k| {
                Kind::parse(k).ok_or_else(|| {
                    invalid(name, format!("kind {k:?} is not \"oidc\" or \"oauth2\""))
                })
            })
            .transpose()?;
        let provider = match (out.get_mut(name), kind) {
            (Some(p), None) => p,
            (Some(p), Some(k)) if k == p.kind => p,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    name,
                    "`kind` cannot change a catalogue provider's kind",
                ));
            }
            (None, Some(k)) => out
                .entry(name.clone())
                .or_insert(Provider::generic(name, k)),
            (None, None) => {
                return Err(invalid(
                    name,
                    "not in the catalogue: set `kind = \"oidc\"` or `\"oauth2\"`",
                ));
            }
        };
        provider.apply(c)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_complete() {
        let names: Vec<_> = CATALOGUE.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "google",
                "microsoft",
                "discord",
                "spotify",
                "github",
                "slack"
            ]
        );
        for e in CATALOGUE {
            assert!(e.authorize_url.starts_with("https://") && e.token_url.starts_with("https://"));
            assert_eq!(e.kind == Kind::Oidc, e.issuer.is_some(), "{}", e.name);
            assert!(!e.scopes.is_empty());
        }
        let google = CATALOGUE.iter().find(|e| e.name == "google").unwrap();
        assert!(
            google
                .authorize_params
                .contains(&("access_type", "offline"))
        );
        assert!(google.authorize_params.contains(&("prompt", "consent")));
        let github = CATALOGUE.iter().find(|e| e.name == "github").unwrap();
        assert!(github.quirks.token_wants_json_accept);
        let microsoft = CATALOGUE.iter().find(|e| e.name == "microsoft").unwrap();
        assert!(microsoft.quirks.refresh_needs_scope);
    }

    #[test]
    fn config_overrides_and_generic_kinds() {
        let c = Config::from_toml(
            r#"
            [providers.google]
            client_id = "gid"
            client_secret_env = "X"
            login = true
            token_url = "http://127.0.0.1:9000/token"
            [providers.acme]
            kind = "oidc"
            issuer = "https://login.acme.example"
            client_id = "aid"
            [providers.legacy]
            kind = "oauth2"
            authorize_url = "https://legacy.example/auth"
            token_url = "https://legacy.example/token"
            scopes = ["a", "b"]
            "#,
        )
        .unwrap();
        let p = resolve(&c).unwrap();
        let google = &p["google"];
        assert!(google.configured && google.login && google.builtin);
        assert_eq!(
            google.token_url.as_deref(),
            Some("http://127.0.0.1:9000/token")
        );
        assert_eq!(
            google.authorize_url.as_deref(),
            Some("https://accounts.google.com/o/oauth2/v2/auth")
        );
        assert!(!p["spotify"].configured);
        assert_eq!(p["acme"].kind, Kind::Oidc);
        assert!(p["acme"].configured && !p["acme"].builtin);
        assert_eq!(p["legacy"].scopes, ["a", "b"]);
        assert!(!p["legacy"].configured);
    }

    #[test]
    fn email_verified_is_read_from_each_providers_own_field() {
        let c = Config::from_toml(
            "[providers.acme]\nkind = \"oauth2\"\nclient_id = \"x\"\n\
             authorize_url = \"https://a.example/a\"\ntoken_url = \"https://a.example/t\"\n\
             [providers.discord]\nclient_id = \"x\"\n[providers.github]\nclient_id = \"x\"",
        )
        .unwrap();
        let p = resolve(&c).unwrap();
        let says = |name: &str, doc: serde_json::Value| p[name].claims.says_email_verified(&doc);
        let verified_field = serde_json::json!({"email": "a@b.example", "verified": true});
        let oidc_field = serde_json::json!({"email": "a@b.example", "email_verified": true});
        // A generic provider's `verified` may mean anything: it does not count.
        assert!(!says("acme", verified_field.clone()));
        assert!(says("acme", oidc_field.clone()));
        assert!(says("discord", verified_field.clone()));
        assert!(!says("discord", oidc_field.clone()));
        assert!(!says("github", verified_field) && !says("github", oidc_field));
        assert!(says("google", serde_json::json!({"email_verified": true})));
        assert!(!says(
            "google",
            serde_json::json!({"email_verified": "yes"})
        ));
    }

    #[test]
    fn bad_provider_config_is_named() {
        for (text, needle) in [
            ("[providers.nope]\nclient_id = \"x\"", "providers.nope"),
            ("[providers.x]\nkind = \"saml\"", "kind \"saml\""),
            ("[providers.x]\nkind = \"oidc\"", "needs `issuer`"),
            (
                "[providers.x]\nkind = \"oauth2\"\nauthorize_url = \"https://a\"",
                "needs `authorize_url` and `token_url`",
            ),
            ("[providers.google]\nkind = \"oauth2\"", "cannot change"),
            (
                "[providers.google]\ntoken_url = \"ftp://x\"",
                "not an http(s) URL",
            ),
        ] {
            let c = Config::from_toml(text).unwrap();
            let err = resolve(&c).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
