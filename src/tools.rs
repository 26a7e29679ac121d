//! Tools as data (SPEC §8): an HTTP action against a provider's API, with arguments that
//! may fill whole path segments and declared query names, and nothing else.
//!
//! The URL template is split once, at load, into a fixed origin (scheme, host, port), a
//! list of path segments (literal or `{name}`), and the allowed query names. A request URL
//! is assembled from those parts: an argument is percent-encoded as one segment (every
//! byte but the unreserved ones), `.` and `..` are refused (they are dot-segments that
//! would climb the path), and the result is parsed again and checked to have the same
//! origin and path prefix. No argument can change where a credential is sent.

use std::collections::BTreeMap;

use reqwest::Url;
use serde_json::Value;

use crate::config::{Config, ConfigError};

/// A tool from the catalogue or the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub name: String,
    pub provider: String,
    pub method: reqwest::Method,
    /// The template as written.
    pub url: String,
    origin: Url,
    segments: Vec<Segment>,
    pub query: Vec<String>,
    pub scopes: Vec<String>,
    /// What the tool does, for agents choosing one (`GET /v1/tools`, MCP `tools/list`).
    pub description: String,
    /// Descriptions of arguments, by name (each a path argument or a query name).
    pub arg_descriptions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Arg(String),
}

/// An argument that cannot be used, by name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("argument {name:?}: {reason}")]
pub struct ArgError {
    pub name: String,
    pub reason: &'static str,
}

struct Builtin {
    name: &'static str,
    provider: &'static str,
    method: &'static str,
    url: &'static str,
    query: &'static [&'static str],
    scopes: &'static [&'static str],
    description: &'static str,
    args: &'static [(&'static str, &'static str)],
}

/// Built-in tools; config entries with the same name replace them.
const BUILTIN: &[Builtin] = &[
    Builtin {
        name: "spotify.me",
        provider: "spotify",
        method: "GET",
        url: "https://api.spotify.com/v1/me",
        query: &[],
        scopes: &["user-read-private"],
        description: "The signed-in Spotify user's profile: id, display name, country, subscription level (product) and follower count. Use it to greet the user or to learn which Spotify account is connected.",
        args: &[],
    },
    Builtin {
        name: "google.calendar.events",
        provider: "google",
        method: "GET",
        url: "https://www.googleapis.com/calendar/v3/calendars/{calendar_id}/events",
        query: &["maxResults", "timeMin"],
        scopes: &["https://www.googleapis.com/auth/calendar.readonly"],
        description: "Events of one of the user's Google calendars, in Google Calendar API v3 form (summary, start, end, attendees, location). Use `primary` for the main calendar.",
        args: &[
            (
                "calendar_id",
                "The calendar: `primary`, or a calendar id such as an email address.",
            ),
            (
                "maxResults",
                "The most events to return (1-2500; the API's default is 250).",
            ),
            (
                "timeMin",
                "Only events ending after this RFC 3339 time, e.g. 2026-12-01T00:00:00Z.",
            ),
        ],
    },
    Builtin {
        name: "github.user",
        provider: "github",
        method: "GET",
        url: "https://api.github.com/user",
        query: &[],
        scopes: &["read:user"],
        description: "The signed-in GitHub user's profile: login, name, public email, company, bio, public repository and follower counts.",
        args: &[],
    },
    Builtin {
        name: "discord.me",
        provider: "discord",
        method: "GET",
        url: "https://discord.com/api/users/@me",
        query: &[],
        scopes: &["identify"],
        description: "The signed-in Discord user: id, username, global display name, avatar and locale.",
        args: &[],
    },
    Builtin {
        name: "microsoft.me",
        provider: "microsoft",
        method: "GET",
        url: "https://graph.microsoft.com/v1.0/me",
        query: &[],
        scopes: &["User.Read"],
        description: "The signed-in Microsoft account's profile from Microsoft Graph: display name, given and family name, email (mail), user principal name, job title and office location.",
        args: &[],
    },
];

fn invalid(name: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("tools.\"{name}\""),
        reason: reason.into(),
    }
}

/// Tool names match `^[A-Za-z0-9_.-]{1,64}$` (SPEC §11): they travel as MCP tool names
/// and OAuth scopes (`tool:NAME`).
fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl Tool {
    /// Parses and checks one tool definition.
    pub fn new(
        name: &str,
        provider: &str,
        method: &str,
        url: &str,
        query: Vec<String>,
        scopes: Vec<String>,
    ) -> Result<Tool, ConfigError> {
        if !valid_tool_name(name) {
            return Err(invalid(
                name,
                "tool names are 1 to 64 letters, digits, '.', '-' and '_'",
            ));
        }
        let method = match method.to_ascii_uppercase().as_str() {
            m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE") => {
                reqwest::Method::from_bytes(m.as_bytes())
                    .map_err(|_| invalid(name, "bad method"))?
            }
            other => return Err(invalid(name, format!("method {other:?} is not supported"))),
        };
        let (base, path) = match url.find("://").and_then(|i| {
            url[i + 3..]
                .find('/')
                .map(|j| (&url[..i + 3 + j], &url[i + 3 + j..]))
        }) {
            Some((base, path)) => (base, path),
            None => (url, "/"),
        };
        if path.contains(['?', '#']) {
            return Err(invalid(
                name,
                "the url may not carry a query or fragment; declare query names instead",
            ));
        }
        let origin = Url::parse(base).map_err(|e| invalid(name, format!("url: {e}")))?;
        if !matches!(origin.scheme(), "https" | "http")
            || origin.host_str().is_none()
            || base.contains(['{', '}', '@'])
        {
            return Err(invalid(
                name,
                "the url needs an http(s) scheme and a fixed host, without user info",
            ));
        }
        let mut segments = Vec::new();
        for seg in path.split('/').skip(1) {
            if let Some(arg) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if arg.is_empty() || !arg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(invalid(name, format!("bad placeholder {seg:?}")));
                }
                segments.push(Segment::Arg(arg.to_owned()));
            } else if seg.contains(['{', '}']) || seg == "." || seg == ".." {
                return Err(invalid(
                    name,
                    format!("segment {seg:?}: a placeholder must be a whole segment"),
                ));
            } else {
                segments.push(Segment::Literal(seg.to_owned()));
            }
        }
        Ok(Tool {
            name: name.to_owned(),
            provider: provider.to_owned(),
            method,
            url: url.to_owned(),
            origin,
            segments,
            query,
            scopes,
            description: String::new(),
            arg_descriptions: BTreeMap::new(),
        })
    }

    /// Adds the tool's description and its arguments' descriptions; every described
    /// argument must be one of the tool's. Without a description, one is made from the
    /// method and URL.
    pub fn described(
        mut self,
        description: Option<&str>,
        args: BTreeMap<String, String>,
    ) -> Result<Tool, ConfigError> {
        if let Some(unknown) = args
            .keys()
            .find(|a| !self.path_args().any(|p| p == a.as_str()) && !self.query.contains(a))
        {
            return Err(invalid(
                &self.name,
                format!("args.{unknown}: not a path argument or query name of this tool"),
            ));
        }
        self.description = match description.map(str::trim) {
            Some(d) if !d.is_empty() => d.to_owned(),
            _ => format!("{} {} on {}", self.method, self.url, self.provider),
        };
        self.arg_descriptions = args;
        Ok(self)
    }

    /// The JSON Schema of the tool's arguments: path arguments are required strings,
    /// query names optional strings, and nothing else is accepted.
    pub fn input_schema(&self) -> Value {
        let mut properties = serde_json::Map::new();
        let args = self
            .path_args()
            .chain(self.query.iter().map(String::as_str));
        for name in args {
            let mut prop = serde_json::Map::new();
            prop.insert("type".into(), Value::from("string"));
            if let Some(d) = self.arg_descriptions.get(name) {
                prop.insert("description".into(), Value::from(d.as_str()));
            }
            properties.insert(name.to_owned(), Value::Object(prop));
        }
        let required: Vec<Value> = self.path_args().map(Value::from).collect();
        serde_json::json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    }

    /// The names of the path arguments.
    pub fn path_args(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Arg(a) => Some(a.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// The request URL for `args`. Every path argument is required; every argument must
    /// be a path argument or a declared query name, and a string, number or boolean.
    pub fn request_url(&self, args: &serde_json::Map<String, Value>) -> Result<Url, ArgError> {
        let text = |name: &str, v: &Value| -> Result<String, ArgError> {
            match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                _ => Err(ArgError {
                    name: name.to_owned(),
                    reason: "must be a string, number or boolean",
                }),
            }
        };
        for key in args.keys() {
            if !self.path_args().any(|a| a == key) && !self.query.iter().any(|q| q == key) {
                return Err(ArgError {
                    name: key.clone(),
                    reason: "is not an argument of this tool",
                });
            }
        }
        let mut path = String::new();
        let mut prefix_len = None;
        for seg in &self.segments {
            path.push('/');
            match seg {
                Segment::Literal(l) => path.push_str(l),
                Segment::Arg(a) => {
                    prefix_len.get_or_insert(path.len());
                    let value = args.get(a).ok_or_else(|| ArgError {
                        name: a.clone(),
                        reason: "is required",
                    })?;
                    let value = text(a, value)?;
                    if value.is_empty() || value == "." || value == ".." {
                        return Err(ArgError {
                            name: a.clone(),
                            reason: "may not be empty, '.' or '..'",
                        });
                    }
                    if value.len() > 1024 {
                        return Err(ArgError {
                            name: a.clone(),
                            reason: "is longer than 1024 bytes",
                        });
                    }
                    path.push_str(&encode_segment(&value));
                }
            }
        }
        if path.is_empty() {
            path.push('/');
        }
        let mut url = self.origin.clone();
        url.set_path(&path);
        {
            let mut pairs = url.query_pairs_mut();
            for q in &self.query {
                if let Some(v) = args.get(q) {
                    pairs.append_pair(q, &text(q, v)?);
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        // Belt and braces: the assembled URL, parsed again, keeps the origin and the
        // fixed part of the path.
        let reparsed = Url::parse(url.as_str()).map_err(|_| ArgError {
            name: String::new(),
            reason: "does not make a valid URL",
        })?;
        let fixed = &path[..prefix_len.unwrap_or(path.len())];
        if reparsed.scheme() != self.origin.scheme()
            || reparsed.host_str() != self.origin.host_str()
            || reparsed.port_or_known_default() != self.origin.port_or_known_default()
            || !reparsed.path().starts_with(fixed)
            || reparsed.path() != path
        {
            return Err(ArgError {
                name: String::new(),
                reason: "would change the tool's address",
            });
        }
        Ok(reparsed)
    }

    /// Whether `url` is on this tool's origin (for redirects).
    pub fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.origin.scheme()
            && url.host_str() == self.origin.host_str()
            && url.port_or_known_default() == self.origin.port_or_known_default()
    }
}

/// Everything but RFC 3986 unreserved characters is percent-encoded in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode_segment(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, SEGMENT).to_string()
}

/// The built-in tools plus the config's, by name.
pub fn resolve(config: &Config) -> Result<BTreeMap<String, Tool>, ConfigError> {
    let mut out = BTreeMap::new();
    for b in BUILTIN {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let tool = Tool::new(
            b.name,
            b.provider,
            b.method,
            b.url,
            owned(b.query),
            owned(b.scopes),
        )?
        .described(
            Some(b.description),
            b.args
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )?;
        out.insert(b.name.to_owned(), tool);
    }
    for (name, t) in &config.tools {
        let tool = Tool::new(
            name,
            &t.provider,
            &t.method,
            &t.url,
            t.query.clone(),
            t.scopes.clone(),
        )?
        .described(t.description.as_deref(), t.args.clone())?;
        out.insert(name.clone(), tool);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool() -> Tool {
        Tool::new(
            "t",
            "google",
            "GET",
            "https://api.example.com:8443/v3/calendars/{calendar_id}/events",
            vec!["maxResults".into()],
            vec![],
        )
        .unwrap()
    }

    fn args(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn descriptions_and_the_input_schema() {
        let t = tool()
            .described(
                Some("  Events of a calendar. "),
                [("calendar_id".to_owned(), "Which calendar".to_owned())].into(),
            )
            .unwrap();
        assert_eq!(t.description, "Events of a calendar.");
        assert_eq!(
            t.input_schema(),
            serde_json::json!({
                "type": "object",
                "properties": {
                    "calendar_id": {"type": "string", "description": "Which calendar"},
                    "maxResults": {"type": "string"},
                },
                "required": ["calendar_id"],
                "additionalProperties": false,
            })
        );
        let err = tool()
            .described(None, [("nope".to_owned(), "x".to_owned())].into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("args.nope"), "{err}");
        let plain = tool().described(None, BTreeMap::new()).unwrap();
        assert!(
            plain
                .description
                .contains("GET https://api.example.com:8443/v3/")
        );
        // Every built-in tool has a description of its own and describes its arguments.
        for t in resolve(&Config::from_toml("").unwrap()).unwrap().values() {
            assert!(t.description.len() > 40, "{}", t.name);
            for arg in t.path_args().chain(t.query.iter().map(String::as_str)) {
                assert!(t.arg_descriptions.contains_key(arg), "{} {arg}", t.name);
            }
        }
    }

    #[test]
    fn tool_names_are_at_most_64_characters() {
        let make = |name: &str| {
            Tool::new(name, "p", "GET", "https://api.example/x", vec![], vec![]).is_ok()
        };
        assert!(make(&"a".repeat(64)) && make("acme.items-v2_x"));
        assert!(!make(&"a".repeat(65)) && !make("") && !make("a b") && !make("a/b"));
    }

    #[test]
    fn arguments_fill_one_segment_and_declared_queries() {
        let url = tool()
            .request_url(&args(
                serde_json::json!({"calendar_id": "primary", "maxResults": 5}),
            ))
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://api.example.com:8443/v3/calendars/primary/events?maxResults=5"
        );
    }

    #[test]
    fn argument_attacks_stay_on_the_tool_host() {
        let t = tool();
        for evil in [
            "../../admin",
            "a/b",
            "//evil.example",
            "@evil.example",
            "evil.example:80",
            "%2F..%2Fadmin",
            "%2e%2e",
            "..%2F",
            "?x=1",
            "#frag",
            "a\\b",
            "\u{0}",
            "http://evil.example/",
            "ü/../x",
        ] {
            let url = t
                .request_url(&args(serde_json::json!({ "calendar_id": evil })))
                .unwrap();
            assert_eq!(url.host_str(), Some("api.example.com"), "{evil}");
            assert_eq!(url.port(), Some(8443), "{evil}");
            assert!(url.path().starts_with("/v3/calendars/"), "{evil}: {url}");
            assert!(url.path().ends_with("/events"), "{evil}: {url}");
            assert_eq!(url.path().matches('/').count(), 4, "{evil}: {url}");
            assert!(url.query().is_none() && url.fragment().is_none(), "{evil}");
        }
        for dots in [".", ".."] {
            let err = t
                .request_url(&args(serde_json::json!({ "calendar_id": dots })))
                .unwrap_err();
            assert_eq!(err.name, "calendar_id");
        }
    }

    #[test]
    fn bad_arguments_are_named() {
        let t = tool();
        let err = t.request_url(&args(serde_json::json!({}))).unwrap_err();
        assert_eq!(
            (err.name.as_str(), err.reason),
            ("calendar_id", "is required")
        );
        let err = t
            .request_url(&args(
                serde_json::json!({"calendar_id": "x", "access_token": "y"}),
            ))
            .unwrap_err();
        assert_eq!(err.name, "access_token");
        let err = t
            .request_url(&args(serde_json::json!({"calendar_id": {"a": 1}})))
            .unwrap_err();
        assert_eq!(err.name, "calendar_id");
    }

    #[test]
    fn templates_are_checked() {
        for bad in [
            "ftp://x.example/a",
            "https://{host}/a",
            "https://user@x.example/a",
            "https://x.example/a{b}",
            "https://x.example/a?q=1",
            "https://x.example/../a",
        ] {
            assert!(
                Tool::new("t", "p", "GET", bad, vec![], vec![]).is_err(),
                "{bad}"
            );
        }
        assert!(Tool::new("t", "p", "TRACE", "https://x.example/", vec![], vec![]).is_err());
    }
}
