//! Typed `[limits]` and `admins` entries, parsed once from the raw configuration.

use serde::Deserialize;

use super::{ConfigError, invalid};

/// One `admins` entry: an identity whose user has the admin role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRule {
    /// `provider:sub:SUBJECT`, or the older bare `provider:SUBJECT`: the provider's stable
    /// subject identifier.
    Subject { provider: String, subject: String },
    /// `provider:email:ADDRESS`: an email address the provider says is verified (compared
    /// without regard to case).
    Email { provider: String, email: String },
}

impl AdminRule {
    pub(super) fn parse(text: &str) -> Result<AdminRule, ConfigError> {
        let bad = || {
            invalid(
                "admins",
                format!("{text:?} is not provider:sub:SUBJECT or provider:email:ADDRESS"),
            )
        };
        let (provider, rest) = text.split_once(':').ok_or_else(bad)?;
        let provider = provider.to_owned();
        let rule = if let Some(email) = rest.strip_prefix("email:") {
            AdminRule::Email {
                provider,
                email: email.to_owned(),
            }
        } else {
            let subject = rest.strip_prefix("sub:").unwrap_or(rest);
            AdminRule::Subject {
                provider,
                subject: subject.to_owned(),
            }
        };
        match &rule {
            AdminRule::Subject {
                provider,
                subject: v,
            }
            | AdminRule::Email { provider, email: v }
                if provider.is_empty() || v.is_empty() =>
            {
                Err(bad())
            }
            _ => Ok(rule),
        }
    }

    /// Whether an identity (`provider`, `subject`, `email` and whether the provider said
    /// that email is verified) is this admin.
    pub fn matches(
        &self,
        provider: &str,
        subject: &str,
        email: Option<&str>,
        email_verified: bool,
    ) -> bool {
        match self {
            AdminRule::Subject {
                provider: p,
                subject: s,
            } => p == provider && s == subject,
            AdminRule::Email {
                provider: p,
                email: e,
            } => {
                p == provider && email_verified && email.is_some_and(|m| m.eq_ignore_ascii_case(e))
            }
        }
    }
}

/// Request rate limits (SPEC §3, `[limits]`). A rate of 0 turns that limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Requests a second per client address on the sign-in routes.
    pub signin_per_second: u32,
    /// Requests a client address may make at once before `signin_per_second` applies.
    pub signin_burst: u32,
    /// Requests a second per (agent, user) on `/v1/*`, in bursts of twice that.
    pub agent_user_per_second: u32,
    /// Requests a second per agent across all its users, in bursts of twice that.
    pub agent_per_second: u32,
    /// Proxies whose forwarding header names the client address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The one header the trusted proxies write (the other is ignored, since a client
    /// could have written it).
    pub forwarded_header: ForwardedHeader,
}

/// Which header a trusted proxy appends the client address to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, most load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            signin_per_second: 10,
            signin_burst: 100,
            agent_user_per_second: 50,
            agent_per_second: 0,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    signin_per_second: Option<u32>,
    signin_burst: Option<u32>,
    agent_user_per_second: Option<u32>,
    agent_per_second: Option<u32>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    forwarded_header: Option<String>,
}

impl RawLimits {
    pub(super) fn parse(self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let mut trusted_proxies = Vec::with_capacity(self.trusted_proxies.len());
        for text in &self.trusted_proxies {
            // A bare address is a one-address network.
            let net = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid(
                        "limits.trusted_proxies",
                        format!("{text:?} is not an address or CIDR (e.g. \"10.0.0.0/8\")"),
                    )
                })?;
            trusted_proxies.push(net.trunc());
        }
        Ok(Limits {
            signin_per_second: self.signin_per_second.unwrap_or(d.signin_per_second),
            signin_burst: self.signin_burst.unwrap_or(d.signin_burst),
            agent_user_per_second: self
                .agent_user_per_second
                .unwrap_or(d.agent_user_per_second),
            agent_per_second: self.agent_per_second.unwrap_or(d.agent_per_second),
            trusted_proxies,
            forwarded_header: match self
                .forwarded_header
                .as_deref()
                .map(str::to_ascii_lowercase)
            {
                None => ForwardedHeader::default(),
                Some(h) if h == "x-forwarded-for" => ForwardedHeader::XForwardedFor,
                Some(h) if h == "forwarded" => ForwardedHeader::Forwarded,
                Some(other) => {
                    return Err(invalid(
                        "limits.forwarded_header",
                        format!("{other:?} is not \"x-forwarded-for\" or \"forwarded\""),
                    ));
                }
            },
        })
    }
}
