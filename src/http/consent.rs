//! The consent page (`templates/consent.html`): the agent, every tool and provider it asks
//! for with the user's connection to each, what policy would refuse and why, Connect for
//! the providers not yet connected (back here afterwards), and Approve / Deny.

use askama::Template;
use askama_web::WebTemplate;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::Error;
use crate::grants::{AuthorizeRequest, ClientKind, Pending};

/// `templates/consent.html`. Holds the CSRF token: no `Debug`.
#[derive(Template, WebTemplate)]
#[template(path = "consent.html")]
struct ConsentPage {
    agent: String,
    /// How the agent is known: registered by an operator, or a public client.
    vouched: &'static str,
    /// Where the answer goes (scheme, host and port of the redirect URI).
    destination: String,
    offered: Vec<Item>,
    refused: Vec<(String, String)>,
    connect: Vec<Connect>,
    /// Some account to connect is connected already, and needs the user again.
    again: bool,
    /// Days a grant lasts at most.
    lifetime_days: i64,
    request: AuthorizeRequest,
    csrf: String,
    return_to: String,
}

struct Item {
    label: String,
    description: String,
    provider: String,
    /// `connected`, `not connected` or the connection's status.
    connection: String,
}

struct Connect {
    provider: String,
    /// The provider's display name.
    display: String,
    /// The scopes the offered tools need, comma-separated.
    scopes: String,
    again: bool,
}

/// Renders the consent page for `pending`.
pub async fn page(
    app: &AppState,
    pending: &Pending,
    req: &AuthorizeRequest,
    user_id: &str,
    csrf: &str,
    return_to: &str,
) -> Result<Response, Error> {
    let offers = app.grants.offers(&app.policies, pending, user_id)?;
    let connections = app.vault.list(user_id).await?;
    let displays = app.oauth.connect_providers();
    let display_of = |provider: &str| {
        displays
            .iter()
            .find(|(name, _, _)| name == provider)
            .map_or_else(|| provider.to_owned(), |(_, display, _)| display.clone())
    };
    let connection_of = |provider: &str| connections.iter().find(|c| c.provider() == provider);
    let mut offered = Vec::new();
    let mut refused = Vec::new();
    let mut connect: Vec<Connect> = Vec::new();
    for o in offers {
        if let Some(why) = o.refused {
            refused.push((o.scope, why));
            continue;
        }
        let needs = app
            .tools
            .get(&o.name)
            .filter(|t| o.scope.starts_with("tool:") && t.provider == o.provider)
            .map(|t| t.scopes.clone())
            .unwrap_or_default();
        let existing = connection_of(&o.provider);
        let missing: Vec<String> = match existing {
            Some(c) => {
                let granted = c.scopes();
                needs
                    .iter()
                    .filter(|s| !granted.contains(&s.as_str()))
                    .cloned()
                    .collect()
            }
            None => needs.clone(),
        };
        let (connection, ready) = match existing.map(|c| c.status()) {
            Some("active") if missing.is_empty() => ("connected".to_owned(), true),
            Some("active") => (
                "connected, without some scopes this needs".to_owned(),
                false,
            ),
            Some(other) => (other.replace('_', " "), false),
            None => ("not connected".to_owned(), false),
        };
        if !ready {
            // Connecting again keeps what was granted before: ask for what is missing.
            let scopes = if existing.is_some_and(|c| c.status() == "active") {
                missing
            } else {
                needs
            };
            match connect.iter_mut().find(|c| c.provider == o.provider) {
                Some(c) => {
                    for s in scopes {
                        if !c.scopes.split(',').any(|x| x == s) {
                            if !c.scopes.is_empty() {
                                c.scopes.push(',');
                            }
                            c.scopes.push_str(&s);
                        }
                    }
                }
                None => connect.push(Connect {
                    display: display_of(&o.provider),
                    provider: o.provider.clone(),
                    scopes: scopes.join(","),
                    again: existing.is_some(),
                }),
            }
        }
        offered.push(Item {
            label: o.scope,
            description: o.description,
            provider: o.provider,
            connection,
        });
    }
    let again = connect.iter().any(|c| c.again);
    let destination = url::Url::parse(&pending.redirect_uri)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let page = ConsentPage {
        agent: pending.client.display.clone(),
        vouched: match pending.client.kind {
            ClientKind::Secret | ClientKind::KeyJwt(_) => {
                "an agent registered by this service's operators"
            }
            ClientKind::Public => {
                "an application that registered itself; check that you started this"
            }
        },
        destination,
        offered,
        refused,
        connect,
        again,
        lifetime_days: app.config.grant_lifetime / 86_400,
        request: req.clone(),
        csrf: csrf.to_owned(),
        return_to: return_to.to_owned(),
    };
    let mut resp = page.into_response();
    // Approve and Deny end with a redirect to the client: `form-action` must allow it.
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        app.csp_with(&pending.redirect_uri),
    );
    Ok(resp)
}
