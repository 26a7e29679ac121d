//! Server-rendered pages: the sign-in page, the account page, the connect confirmation and
//! the HTML error page, as askama templates under `templates/` (one file per page, one shared
//! layout). Plain HTML forms, no JavaScript, one same-origin stylesheet, so the strict CSP
//! holds and everything works with JavaScript off. The templates escape every interpolated
//! value (askama's HTML escaping is on for `.html` files); nothing here builds HTML by hand.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Form, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::browser::{BrowserSession, SignedIn, require_csrf};
use crate::audit::Actor;
use crate::clock::rfc3339;
use crate::error::Error;
use crate::oauth::Disconnected;
use crate::sessions::Sessions;

/// `GET /static/app.css`.
#[utoipa::path(
    get,
    path = "/static/app.css",
    operation_id = "stylesheet",
    summary = "The pages' stylesheet",
    responses((status = 200, description = "CSS", content_type = "text/css"))
)]
pub async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("app.css"),
    )
        .into_response()
}

/// `GET /` — the sign-in page, or the account page when signed in.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "home",
    summary = "Sign-in page, or the account page when signed in",
    responses((status = 200, description = "HTML page", content_type = "text/html"))
)]
pub async fn home(
    State(app): State<AppState>,
    current: Option<BrowserSession>,
) -> Result<Response, Error> {
    match current {
        Some(BrowserSession {
            token,
            user_id: Some(user_id),
            ..
        }) => Ok(account(&app, SignedIn { token, user_id })
            .await?
            .into_response()),
        _ => Ok(sign_in_page(&app, None)),
    }
}

/// The sign-in page; with `return_to`, signing in comes back there.
pub fn sign_in_page(app: &AppState, return_to: Option<String>) -> Response {
    SignInPage {
        providers: app.oauth.login_providers(),
        for_agent: return_to
            .as_deref()
            .is_some_and(|r| r.starts_with("/oauth2/authorize")),
        return_to,
    }
    .into_response()
}

/// `templates/sign_in.html`: one button per sign-in provider, `(name, display name)`.
#[derive(Template, WebTemplate)]
#[template(path = "sign_in.html")]
struct SignInPage {
    providers: Vec<(String, String)>,
    /// A same-origin path to come back to after signing in.
    return_to: Option<String>,
    /// Signing in is the first step of an application's authorization request.
    for_agent: bool,
}

/// `templates/account.html`. Holds the CSRF token: no `Debug`.
#[derive(Template, WebTemplate)]
#[template(path = "account.html")]
struct AccountPage {
    /// `(provider, the name, email or subject shown)`.
    identities: Vec<(String, String)>,
    connections: Vec<ConnectionRow>,
    connect: Vec<ConnectOffer>,
    sessions: Vec<SessionRow>,
    grants: Vec<GrantRow>,
    csrf: String,
}

/// An agent with access ("Apps with access").
struct GrantRow {
    id: String,
    agent: String,
    access: String,
    created: String,
    last_used: String,
}

struct ConnectionRow {
    id: String,
    provider: String,
    scopes: String,
    status: String,
    last_used: String,
}

struct ConnectOffer {
    name: String,
    display: String,
    /// The provider's default scopes, comma-separated, prefilled in the form.
    scopes: String,
}

struct SessionRow {
    created: String,
    last_seen: String,
    current: bool,
}

async fn account(app: &AppState, me: SignedIn) -> Result<AccountPage, Error> {
    let identities = app
        .oauth
        .identities(&me.user_id)
        .await?
        .into_iter()
        .map(|(provider, subject, email, name)| (provider, name.or(email).unwrap_or(subject)))
        .collect();
    let connections = app
        .vault
        .list(&me.user_id)
        .await?
        .iter()
        .map(|c| ConnectionRow {
            id: c.id().to_owned(),
            provider: c.provider().to_owned(),
            scopes: c.scopes().join(" "),
            status: c.status().to_owned(),
            last_used: c.last_used_at().map_or_else(|| "never".to_owned(), rfc3339),
        })
        .collect();
    let connect = app
        .oauth
        .connect_providers()
        .into_iter()
        .map(|(name, display, scopes)| ConnectOffer {
            name,
            display,
            scopes: scopes.join(","),
        })
        .collect();
    let sessions = app
        .sessions
        .list(&me.user_id, &me.token)
        .await?
        .into_iter()
        .map(|s| SessionRow {
            created: rfc3339(s.created_at),
            last_seen: rfc3339(s.last_seen_at),
            current: s.current,
        })
        .collect();
    let grants = app
        .grants
        .list(&me.user_id)
        .await?
        .into_iter()
        .map(|g| GrantRow {
            id: g.id,
            agent: g.agent,
            access: g
                .tools
                .iter()
                .map(|t| format!("tool:{t}"))
                .chain(g.providers.iter().map(|p| format!("credential:{p}")))
                .collect::<Vec<_>>()
                .join(" "),
            created: rfc3339(g.created_at),
            last_used: g.last_used_at.map_or_else(|| "never".to_owned(), rfc3339),
        })
        .collect();
    Ok(AccountPage {
        identities,
        connections,
        connect,
        sessions,
        grants,
        csrf: Sessions::csrf_token(&me.token),
    })
}

/// The page that confirms a connect flow another site navigated to (an agent's
/// `reauth_required` link, or a forged one): what would be connected, with which scopes,
/// and a CSRF-protected Continue that posts back to `/connect/{provider}`
/// (`templates/connect.html`).
#[derive(Template, WebTemplate)]
#[template(path = "connect.html")]
pub struct ConfirmConnect<'a> {
    pub provider: &'a str,
    pub display: &'a str,
    /// Every scope the flow asks for, the provider's defaults included.
    pub scopes: &'a [String],
    /// The scopes the link asked for, posted back as they came.
    pub extra: &'a [String],
    pub return_to: Option<&'a str>,
    pub csrf: &'a str,
}

/// A form that carries only the CSRF token.
// The CSRF token is not printable: no `Debug`.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CsrfField {
    csrf_token: String,
}

impl CsrfField {
    pub fn token(&self) -> &str {
        &self.csrf_token
    }
}

fn back_home() -> Response {
    let mut resp = axum::http::StatusCode::SEE_OTHER.into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/"));
    resp
}

/// `POST /connections/{id}/disconnect` — the account page's disconnect button.
#[utoipa::path(
    post,
    path = "/connections/{id}/disconnect",
    operation_id = "disconnect_form",
    summary = "Disconnect from the account page's form",
    params(("id" = String, Path, description = "the connection")),
    request_body(content = CsrfField, content_type = "application/x-www-form-urlencoded"),
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 303, description = "Redirect"),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn disconnect_form(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfField>,
) -> Result<Response, Error> {
    require_csrf(&app, &headers, &me.token, Some(&f.csrf_token))?;
    match app
        .broker
        .disconnect(Actor::User(me.user_id.clone()), &me.user_id, &id)
        .await?
    {
        Disconnected::PendingRetry => Err(Error::ProviderUnavailable),
        Disconnected::Erased { .. } | Disconnected::ErasedRevocationFailed(_) => Ok(back_home()),
    }
}

/// `POST /sessions/end-all` — the account page's "sign out everywhere" button.
#[utoipa::path(
    post,
    path = "/sessions/end-all",
    operation_id = "end_all_form",
    summary = "Sign out everywhere from the account page's form",
    request_body(content = CsrfField, content_type = "application/x-www-form-urlencoded"),
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 303, description = "Redirect"),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn end_all_form(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    Form(f): Form<CsrfField>,
) -> Result<Response, Error> {
    require_csrf(&app, &headers, &me.token, Some(&f.csrf_token))?;
    super::account::end_all(&app, &me).await?;
    Ok(back_home())
}

/// `templates/error.html`: a problem document's title, detail and code.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    title: String,
    detail: String,
    code: String,
}

/// Turns problem documents into a friendly page for browsers (requests that accept HTML
/// and not JSON); API clients keep the RFC 9457 JSON.
pub async fn friendly_errors(req: Request, next: Next) -> Response {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let resp = next.run(req).await;
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !is_problem || !accept.contains("text/html") {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let problem: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let text = |k: &str| {
        problem
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let page = ErrorPage {
        title: text("title"),
        detail: text("detail"),
        code: text("code"),
    };
    let Ok(html) = page.render() else {
        // Rendering plain strings cannot fail; if it ever did, the JSON still answers.
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Response::from_parts(parts, axum::body::Body::from(html))
}

#[cfg(test)]
mod tests {
    use askama::Template;

    use super::{AccountPage, ConfirmConnect, ConnectOffer, ConnectionRow, ErrorPage, SignInPage};

    /// What every page shares: the stylesheet, and no script of any kind.
    fn framed(html: &str) {
        assert!(html.starts_with("<!doctype html>"), "{html}");
        assert!(
            html.contains("<link rel=\"stylesheet\" href=\"/static/app.css\">"),
            "{html}"
        );
        for script in ["<script", "<style", " style=", "javascript:"] {
            assert!(!html.contains(script), "{script} in {html}");
        }
    }

    #[test]
    fn connect_confirmation_escapes_what_it_shows() {
        let scopes = vec!["openid".to_owned(), "<img src=x>".to_owned()];
        let extra = vec!["<img src=x>".to_owned(), "b'c".to_owned()];
        let html = ConfirmConnect {
            provider: "acme",
            display: "Acme <b>&</b>",
            scopes: &scopes,
            extra: &extra,
            return_to: Some("/x\"><script>"),
            csrf: "tok\"en",
        }
        .render()
        .unwrap();
        for shown in [
            "<title>Connect Acme &#60;b&#62;&#38;&#60;/b&#62; · Strongbox</title>",
            "<h1>Connect Acme &#60;b&#62;&#38;&#60;/b&#62;</h1>",
            "<code>openid</code>",
            "<code>&#60;img src=x&#62;</code>",
            "name=\"scopes\" value=\"&#60;img src=x&#62;,b&#39;c\"",
            "name=\"return_to\" value=\"/x&#34;&#62;&#60;script&#62;\"",
            "name=\"csrf_token\" value=\"tok&#34;en\"",
            "<form method=\"post\" action=\"/connect/acme\">",
            "<button>Continue</button> <a class=\"button\" href=\"/\">Cancel</a>",
        ] {
            assert!(html.contains(shown), "{shown} not in {html}");
        }
        for raw in ["<b>", "<img", "<script", "b'c"] {
            assert!(!html.contains(raw), "{raw} in {html}");
        }
        framed(&html);
    }

    #[test]
    fn connect_confirmation_without_scopes_or_return_to() {
        let html = ConfirmConnect {
            provider: "a/b?c",
            display: "Acme",
            scopes: &[],
            extra: &[],
            return_to: None,
            csrf: "t",
        }
        .render()
        .unwrap();
        assert!(html.contains("<li>the provider's defaults</li>"), "{html}");
        assert!(!html.contains("return_to"), "{html}");
        // The provider is a path segment of the form's target: percent-encoded.
        assert!(html.contains("action=\"/connect/a%2Fb%3Fc\""), "{html}");
    }

    #[test]
    fn sign_in_page_escapes_provider_names() {
        let html = SignInPage {
            providers: vec![("acme".to_owned(), "Acme \"<script>".to_owned())],
            return_to: None,
            for_agent: false,
        }
        .render()
        .unwrap();
        assert!(
            html.contains("<title>Sign in · Strongbox</title>"),
            "{html}"
        );
        assert!(
            html.contains(
                "<li><a class=\"button\" href=\"/login/acme\">Sign in with Acme &#34;&#60;script&#62;</a></li>"
            ),
            "{html}"
        );
        assert!(!html.contains("No sign-in provider"), "{html}");
        framed(&html);
        let none = SignInPage {
            providers: vec![],
            return_to: None,
            for_agent: false,
        }
        .render()
        .unwrap();
        assert!(
            none.contains("<li>No sign-in provider is configured.</li>"),
            "{none}"
        );
    }

    #[test]
    fn sign_in_links_carry_the_way_back_encoded() {
        let html = SignInPage {
            providers: vec![("acme".to_owned(), "Acme".to_owned())],
            return_to: Some("/oauth2/authorize?client_id=a&state=\"x\"".to_owned()),
            for_agent: true,
        }
        .render()
        .unwrap();
        assert!(
            html.contains(
                "href=\"/login/acme?return_to=%2Foauth2%2Fauthorize%3Fclient_id%3Da%26state%3D%22x%22\""
            ),
            "{html}"
        );
        assert!(
            html.contains("An application is asking for access"),
            "{html}"
        );
    }

    #[test]
    fn account_page_escapes_and_carries_the_csrf_token() {
        let html = AccountPage {
            identities: vec![("acme".to_owned(), "<i>Alice</i>".to_owned())],
            connections: vec![ConnectionRow {
                id: "c1".to_owned(),
                provider: "tools".to_owned(),
                scopes: "read <img src=x>".to_owned(),
                status: "active".to_owned(),
                last_used: "never".to_owned(),
            }],
            connect: vec![ConnectOffer {
                name: "acme".to_owned(),
                display: "Acme'".to_owned(),
                scopes: "openid,\"x\"".to_owned(),
            }],
            sessions: vec![],
            grants: vec![super::GrantRow {
                id: "g/1".to_owned(),
                agent: "<b>bot</b>".to_owned(),
                access: "tool:x".to_owned(),
                created: "then".to_owned(),
                last_used: "never".to_owned(),
            }],
            csrf: "c\"srf".to_owned(),
        }
        .render()
        .unwrap();
        for shown in [
            "<h1>Your account</h1>",
            "<li>acme — &#60;i&#62;Alice&#60;/i&#62;</li>",
            "<tr><td>tools</td><td>read &#60;img src=x&#62;</td><td>active</td><td>never</td><td><form method=\"post\" action=\"/connections/c1/disconnect\">",
            "<label>Acme&#39; scopes <input name=\"scopes\" value=\"openid,&#34;x&#34;\" size=\"40\"></label> <button>Connect Acme&#39;</button>",
            "<form method=\"post\" action=\"/sessions/end-all\"><input type=\"hidden\" name=\"csrf_token\" value=\"c&#34;srf\">",
            "<button>Sign out everywhere</button></form><form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf_token\" value=\"c&#34;srf\"><button>Sign out</button></form>",
        ] {
            assert!(html.contains(shown), "{shown} not in {html}");
        }
        assert!(
            html.contains("<td>&#60;b&#62;bot&#60;/b&#62;</td><td>tool:x</td>"),
            "{html}"
        );
        assert!(html.contains("action=\"/grants/g%2F1/revoke\""), "{html}");
        assert_eq!(html.matches("value=\"c&#34;srf\"").count(), 4, "{html}");
        for raw in ["<i>", "<img", "c\"srf", "Acme'"] {
            assert!(!html.contains(raw), "{raw} in {html}");
        }
        framed(&html);
    }

    #[test]
    fn error_page_escapes_the_problem() {
        let html = ErrorPage {
            title: "Not <found>".to_owned(),
            detail: "no \"x\" & y".to_owned(),
            code: "<not_found>".to_owned(),
        }
        .render()
        .unwrap();
        for shown in [
            "<title>Not &#60;found&#62; · Strongbox</title>",
            "<h1>Not &#60;found&#62;</h1>",
            "<p>no &#34;x&#34; &#38; y</p>",
            "<p class=\"code\">Error code: &#60;not_found&#62;</p>",
            "<p><a href=\"/\">Back to Strongbox</a></p>",
        ] {
            assert!(html.contains(shown), "{shown} not in {html}");
        }
        framed(&html);
    }
}
