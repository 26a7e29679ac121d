//! Strongbox as an OAuth 2.1 authorization server (SPEC §11), end to end over real HTTP:
//! the service listens on 127.0.0.1, a provider the test starts signs the user in and is
//! connected from the consent page, and the test plays both the browser (cookies, forms,
//! redirects) and the agent (PKCE, token endpoint, `/v1`). `attacks` holds the refusals,
//! `jwt` RFC 7523 `private_key_jwt`, `mcp` an rmcp client discovering everything from the
//! bare `/mcp` URL.

mod attacks;
mod cimd;
mod flow;
mod jwt;
mod mcp;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::Value;
use strongbox::clock::{Clock, ManualClock};

use crate::support::Site;

pub(crate) const START: i64 = 1_900_000_000;

const POLICY: &str = r#"
permit(principal == Agent::"bot", action == Action::"run_tool", resource)
  when { resource.provider == Provider::"acme" || resource.provider == Provider::"beta" };
permit(principal == Agent::"bot", action == Action::"fetch_credential", resource == Provider::"acme");
permit(principal == Agent::"other", action == Action::"run_tool", resource)
  when { resource.provider == Provider::"acme" };
permit(principal == Agent::"jwt-bot", action == Action::"run_tool", resource)
  when { resource.provider == Provider::"acme" };
forbid(principal, action == Action::"run_tool", resource == Tool::"acme.admin");
// Every client may run acme.items: MCP clients register themselves.
permit(principal, action == Action::"run_tool", resource == Tool::"acme.items");
"#;

/// The service, listening, with its provider and a browser.
pub(crate) struct World {
    pub site: Site,
    pub base: String,
    pub idp: crate::agents::Shared,
    pub clock: ManualClock,
    pub web: Web,
}

pub(crate) async fn world(site: Site) -> World {
    // Every log line of the process, at TRACE, is scanned for secrets (`check_trail`).
    crate::leak::logs();
    let (idp_base, idp) = crate::agents::start_idp().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let policies = site.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("grants.cedar"), POLICY).unwrap();
    let config = strongbox::config::Config::from_toml(&format!(
        "public_url = \"{base}\"\npolicies_dir = \"{}\"\n[limits]\nagent_user_per_second = 1000\n\
         signin_per_second = 1000\nsignin_burst = 1000\n\
         [providers.acme]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"csecret\"\nlogin = true\n\
         authorize_url = \"{idp_base}/authorize\"\ntoken_url = \"{idp_base}/token\"\nuserinfo_url = \"{idp_base}/userinfo\"\n\
         revocation_url = \"{idp_base}/revoke\"\nscopes = [\"openid\", \"email\"]\n\
         [providers.beta]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"csecret\"\n\
         authorize_url = \"{idp_base}/authorize\"\ntoken_url = \"{idp_base}/token\"\nuserinfo_url = \"{idp_base}/userinfo\"\nscopes = [\"read\"]\n\
         [tools.\"acme.items\"]\nprovider = \"acme\"\nmethod = \"GET\"\nurl = \"{idp_base}/api/items/{{item}}\"\n\
         scopes = [\"email\"]\ndescription = \"One of the user's items\"\n\
         [tools.\"acme.other\"]\nprovider = \"acme\"\nmethod = \"GET\"\nurl = \"{idp_base}/api/other\"\nscopes = [\"email\"]\n\
         [tools.\"acme.admin\"]\nprovider = \"acme\"\nmethod = \"GET\"\nurl = \"{idp_base}/api/admin\"\nscopes = [\"email\"]\n\
         [tools.\"beta.feed\"]\nprovider = \"beta\"\nmethod = \"GET\"\nurl = \"{idp_base}/api/feed\"\nscopes = [\"read\"]\n",
        policies.display()
    ))
    .unwrap();
    site.ok(&["keys", "init"]);
    let clock = ManualClock::at_unix(START);
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let state =
        strongbox::AppState::build(config, site.db().await, site.vault().await, shared).unwrap();
    let app = strongbox::app(state.clone());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    World {
        site,
        web: Web::new(&base),
        base,
        idp,
        clock,
    }
}

/// One answer, as a browser or agent sees it.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub text: String,
}

impl Page {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// A browser: one cookie jar (Strongbox's session cookie), redirects followed by hand.
pub(crate) struct Web {
    http: reqwest::Client,
    base: String,
    cookie: Mutex<Option<String>>,
}

impl Web {
    pub fn new(base: &str) -> Web {
        Web {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_owned(),
            cookie: Mutex::new(None),
        }
    }

    fn url(&self, to: &str) -> String {
        if to.starts_with('/') {
            format!("{}{to}", self.base)
        } else {
            to.to_owned()
        }
    }

    pub async fn send(
        &self,
        method: &str,
        to: &str,
        form: Option<&[(&str, &str)]>,
        headers: &[(&str, &str)],
    ) -> Page {
        let url = self.url(to);
        let mut req = self
            .http
            .request(method.parse().unwrap(), &url)
            .header("accept", "text/html");
        if url.starts_with(&self.base)
            && let Some(c) = self.cookie.lock().unwrap().clone()
        {
            req = req.header("cookie", format!("strongbox={c}"));
        }
        if let Some(form) = form {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form.iter())
                .finish();
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        for v in resp.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            if let Some(rest) = v.strip_prefix("strongbox=") {
                let value = rest.split(';').next().unwrap_or_default().to_owned();
                *self.cookie.lock().unwrap() = (!value.is_empty()).then_some(value);
            }
        }
        Page {
            status: resp.status().as_u16(),
            location: resp
                .headers()
                .get("location")
                .map(|v| self.url(v.to_str().unwrap())),
            text: resp.text().await.unwrap(),
        }
    }

    pub async fn get(&self, to: &str) -> Page {
        self.send("GET", to, None, &[]).await
    }

    /// A form posted from one of Strongbox's pages (same origin).
    pub async fn post(&self, to: &str, form: &[(&str, &str)]) -> Page {
        let origin = self.base.clone();
        self.send(
            "POST",
            to,
            Some(form),
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        )
        .await
    }

    /// Follows redirects from `page` until one leaves for `stop` (returned as it is) or a
    /// page is answered.
    pub async fn follow(&self, mut page: Page, stop: &str) -> Page {
        for _ in 0..10 {
            match &page.location {
                Some(to) if !to.starts_with(stop) => page = self.get(&to.clone()).await,
                _ => return page,
            }
        }
        panic!("too many redirects");
    }
}

/// The value of the first `name="…" value="…"` hidden field on a page.
pub(crate) fn field(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    html_unescape(&rest[..rest.find('"').unwrap()])
}

fn html_unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#34;", "\"")
        .replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&#38;", "&")
        .replace("&#47;", "/")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A PKCE verifier and its S256 challenge.
pub(crate) fn pkce() -> (String, String) {
    let verifier = format!(
        "v{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    (verifier, challenge)
}

/// An authorization request.
pub(crate) struct Ask<'a> {
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub scope: &'a str,
    pub challenge: &'a str,
    pub resource: Option<&'a str>,
}

impl Ask<'_> {
    pub fn url(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("response_type", "code")
            .append_pair("client_id", self.client_id)
            .append_pair("redirect_uri", self.redirect_uri)
            .append_pair("scope", self.scope)
            .append_pair("state", "st-123")
            .append_pair("code_challenge", self.challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(r) = self.resource {
            q.append_pair("resource", r);
        }
        format!("/oauth2/authorize?{}", q.finish())
    }
}

/// Signs in at the provider from the sign-in page `page` (which must offer it) and comes
/// back to where it pointed.
pub(crate) async fn sign_in_from(web: &Web, page: &Page) -> Page {
    let at = page
        .text
        .find("href=\"/login/acme")
        .expect("a sign-in link");
    let rest = &page.text[at + 6..];
    let href = html_unescape(&rest[..rest.find('"').unwrap()]);
    let arrived = web.get(&href).await;
    web.follow(arrived, "\u{0}").await
}

/// Answers the consent page `page` with `decision`; returns where the browser is sent.
pub(crate) async fn decide(web: &Web, page: &Page, decision: &str) -> Page {
    assert_eq!(page.status, 200, "{}", page.text);
    let form_at = page
        .text
        .find("action=\"/oauth2/authorize\"")
        .expect("the consent form");
    let form = &page.text[form_at..];
    let mut fields: Vec<(String, String)> = Vec::new();
    for name in [
        "csrf_token",
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
        "resource",
    ] {
        if form.contains(&format!("name=\"{name}\"")) {
            fields.push((name.to_owned(), field(form, name)));
        }
    }
    fields.push(("decision".into(), decision.into()));
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    web.post("/oauth2/authorize", &pairs).await
}

/// The query parameters of a URL.
pub(crate) fn params(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// A call to the token, revocation or registration endpoint.
pub(crate) async fn oauth_post(
    base: &str,
    path: &str,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> Page {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .form(form);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let resp = req.send().await.unwrap();
    Page {
        status: resp.status().as_u16(),
        location: None,
        text: resp.text().await.unwrap(),
    }
}

/// An agent request with an access token alone.
pub(crate) async fn with_token(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Value,
) -> Page {
    let resp = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    Page {
        status: resp.status().as_u16(),
        location: None,
        text: resp.text().await.unwrap(),
    }
}

/// Registers agent `name` with one redirect URI; its secret.
pub(crate) fn add_agent(site: &Site, name: &str, redirect: &str) -> String {
    let out = site.ok(&["agents", "add", name, "--redirect-uri", redirect]);
    out.lines().last().unwrap().trim().to_owned()
}

pub(crate) const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// Authorizes `ask` in `web` (signing in first if need be) and approves; the code.
pub(crate) async fn approved_code(w: &World, web: &Web, ask: &Ask<'_>) -> String {
    let mut page = web.get(&ask.url()).await;
    if page.text.contains("href=\"/login/acme") {
        page = sign_in_from(web, &page).await;
    }
    let back = decide(web, &page, "approve").await;
    assert_eq!(back.status, 303, "{}", back.text);
    let to = back.location.unwrap();
    assert!(to.starts_with(ask.redirect_uri), "{to}");
    let p = params(&to);
    assert_eq!(p["iss"], w.base);
    assert_eq!(p["state"], "st-123");
    p["code"].clone()
}

/// Exchanges `code` as `bot`.
pub(crate) async fn exchange(
    w: &World,
    id: &str,
    secret: &str,
    code: &str,
    verifier: &str,
) -> Page {
    oauth_post(
        &w.base,
        "/oauth2/token",
        Some((id, secret)),
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await
}

/// The trail verifies, holds `kinds`, and no secret is stored in the clear or logged.
pub(crate) fn check_trail(w: &World, kinds: &[&str], secrets: &[&str]) {
    let audit = w.site.ok(&["audit", "verify"]);
    assert!(audit.contains("intact"), "{audit}");
    let at_rest = crate::support::at_rest(&w.site);
    for needle in kinds {
        assert!(
            at_rest
                .windows(needle.len())
                .any(|x| x == needle.as_bytes()),
            "no {needle} event"
        );
    }
    let logs = crate::leak::logs().0.lock().unwrap().clone();
    assert!(!logs.is_empty(), "no log was captured");
    for s in secrets {
        assert!(
            !at_rest.windows(s.len()).any(|x| x == s.as_bytes()),
            "a secret stored in the clear"
        );
        assert!(
            !logs.windows(s.len()).any(|x| x == s.as_bytes()),
            "a secret in the logs"
        );
    }
}
