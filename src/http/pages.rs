//! Server-rendered pages: the sign-in page, the account page and the connect confirmation.
//! Plain HTML forms, no JavaScript, one same-origin stylesheet, so the strict CSP holds and
//! everything works with JavaScript off. Every interpolated value goes through [`esc`].

use std::fmt::Write;

use axum::extract::{Form, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::browser::{BrowserSession, SignedIn, require_csrf};
use crate::audit::Actor;
use crate::clock::rfc3339;
use crate::error::Error;
use crate::oauth::Disconnected;
use crate::sessions::Sessions;
use crate::store::identities;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Strongbox</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head>\
         <body><main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    )
}

/// `GET /static/app.css`.
pub async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("app.css"),
    )
        .into_response()
}

/// `GET /` — the sign-in page, or the account page when signed in.
pub async fn home(
    State(app): State<AppState>,
    current: Option<BrowserSession>,
) -> Result<Html<String>, Error> {
    match current {
        Some(BrowserSession { token, session }) if session.user_id.is_some() => {
            let user_id = session.user_id.unwrap_or_default();
            account(&app, SignedIn { token, user_id }).await
        }
        _ => Ok(Html(sign_in_page(&app))),
    }
}

fn sign_in_page(app: &AppState) -> String {
    let mut body = String::from(
        "<p>Sign in to manage the accounts your agents may use.</p><ul class=\"providers\">",
    );
    let providers = app.oauth.login_providers();
    if providers.is_empty() {
        body.push_str("<li>No sign-in provider is configured.</li>");
    }
    for (name, display) in providers {
        let _ = write!(
            body,
            "<li><a class=\"button\" href=\"/login/{}\">Sign in with {}</a></li>",
            esc(&name),
            esc(&display)
        );
    }
    body.push_str("</ul>");
    page("Sign in", &body)
}

async fn account(app: &AppState, me: SignedIn) -> Result<Html<String>, Error> {
    let csrf = esc(&Sessions::csrf_token(&me.token));
    let mut body = String::new();
    body.push_str("<h2>Identities</h2><ul>");
    for (provider, subject, email, name) in identities::for_user(app.db.pool(), &me.user_id).await?
    {
        let label = name.or(email).unwrap_or(subject);
        let _ = write!(body, "<li>{} — {}</li>", esc(&provider), esc(&label));
    }
    body.push_str("</ul><h2>Connections</h2><table><tr><th>Provider</th><th>Scopes</th><th>Status</th><th>Last used</th><th></th></tr>");
    for c in app.vault.list(&me.user_id).await? {
        let last = c.last_used_at().map_or_else(|| "never".to_owned(), rfc3339);
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><form method=\"post\" action=\"/connections/{}/disconnect\">\
             <input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\"><button>Disconnect</button></form></td></tr>",
            esc(c.provider()),
            esc(&c.scopes().join(" ")),
            esc(c.status()),
            esc(&last),
            esc(c.id()),
        );
    }
    body.push_str("</table><h2>Connect an account</h2><ul class=\"connect\">");
    for (name, display, scopes) in app.oauth.connect_providers() {
        let _ = write!(
            body,
            "<li><form method=\"get\" action=\"/connect/{}\"><label>{} scopes \
             <input name=\"scopes\" value=\"{}\" size=\"40\"></label> \
             <button>Connect {}</button></form></li>",
            esc(&name),
            esc(&display),
            esc(&scopes.join(",")),
            esc(&display),
        );
    }
    body.push_str("</ul><h2>Sessions</h2><ul>");
    for s in app.sessions.list(&me.user_id, &me.token).await? {
        let _ = write!(
            body,
            "<li>Signed in {}, last seen {}{}</li>",
            esc(&rfc3339(s.created_at)),
            esc(&rfc3339(s.last_seen_at)),
            if s.current { " (this browser)" } else { "" }
        );
    }
    let _ = write!(
        body,
        "</ul><form method=\"post\" action=\"/sessions/end-all\"><input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
         <button>Sign out everywhere</button></form>\
         <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
         <button>Sign out</button></form>"
    );
    Ok(Html(page("Your account", &body)))
}

/// The page that confirms a connect flow another site navigated to (an agent's
/// `reauth_required` link, or a forged one): what would be connected, with which scopes,
/// and a CSRF-protected Continue that posts back to `/connect/{provider}`.
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

impl ConfirmConnect<'_> {
    pub fn render(&self) -> String {
        let mut body = format!(
            "<p>A link asks to connect your {} account to Strongbox, so that agents you              delegate to can use it with these scopes:</p><ul class=\"scopes\">",
            esc(self.display)
        );
        if self.scopes.is_empty() {
            body.push_str("<li>the provider's defaults</li>");
        }
        for s in self.scopes {
            let _ = write!(body, "<li><code>{}</code></li>", esc(s));
        }
        let _ = write!(
            body,
            "</ul><p>Continue only if you meant to do this.</p>\
             <form method=\"post\" action=\"/connect/{}\">\
             <input type=\"hidden\" name=\"csrf_token\" value=\"{}\">\
             <input type=\"hidden\" name=\"scopes\" value=\"{}\">",
            esc(&crate::oauth::form_encode(self.provider)),
            esc(self.csrf),
            esc(&self.extra.join(",")),
        );
        if let Some(r) = self.return_to {
            let _ = write!(
                body,
                "<input type=\"hidden\" name=\"return_to\" value=\"{}\">",
                esc(r)
            );
        }
        body.push_str("<button>Continue</button> <a class=\"button\" href=\"/\">Cancel</a></form>");
        page(&format!("Connect {}", self.display), &body)
    }
}

/// The CSRF token is not printable: no `Debug`.
#[derive(Deserialize)]
pub struct CsrfField {
    csrf_token: String,
}

fn back_home() -> Response {
    let mut resp = axum::http::StatusCode::SEE_OTHER.into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/"));
    resp
}

/// `POST /connections/{id}/disconnect` — the account page's disconnect button.
pub async fn disconnect_form(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfField>,
) -> Result<Response, Error> {
    require_csrf(&app, &headers, &me.token, Some(&f.csrf_token))?;
    match app
        .oauth
        .disconnect(Actor::User(me.user_id.clone()), &me.user_id, &id)
        .await?
    {
        Disconnected::PendingRetry => Err(Error::ProviderUnavailable),
        Disconnected::Erased { .. } | Disconnected::ErasedRevocationFailed(_) => Ok(back_home()),
    }
}

/// `POST /sessions/end-all` — the account page's "sign out everywhere" button.
pub async fn end_all_form(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    Form(f): Form<CsrfField>,
) -> Result<Response, Error> {
    require_csrf(&app, &headers, &me.token, Some(&f.csrf_token))?;
    super::browser::end_all(&app, &me).await?;
    Ok(back_home())
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
    let html = page(
        &text("title"),
        &format!(
            "<p>{}</p><p class=\"code\">Error code: {}</p><p><a href=\"/\">Back to Strongbox</a></p>",
            esc(&text("detail")),
            esc(&text("code"))
        ),
    );
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(html))
}

#[cfg(test)]
mod tests {
    use super::{ConfirmConnect, esc};

    #[test]
    fn connect_confirmation_escapes_what_it_shows() {
        let scopes = vec!["openid".to_owned(), "<img src=x>".to_owned()];
        let extra = vec!["<img src=x>".to_owned()];
        let html = ConfirmConnect {
            provider: "acme",
            display: "Acme <b>&</b>",
            scopes: &scopes,
            extra: &extra,
            return_to: Some("/x\"><script>"),
            csrf: "tok\"en",
        }
        .render();
        for shown in [
            "<title>Connect Acme &lt;b&gt;&amp;&lt;/b&gt; · Strongbox</title>",
            "<code>&lt;img src=x&gt;</code>",
            "name=\"scopes\" value=\"&lt;img src=x&gt;\"",
            "name=\"return_to\" value=\"/x&quot;&gt;&lt;script&gt;\"",
            "name=\"csrf_token\" value=\"tok&quot;en\"",
            "<form method=\"post\" action=\"/connect/acme\">",
            "<a class=\"button\" href=\"/\">Cancel</a>",
        ] {
            assert!(html.contains(shown), "{shown} not in {html}");
        }
        for raw in ["<b>", "<img", "<script"] {
            assert!(!html.contains(raw), "{raw} in {html}");
        }
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
