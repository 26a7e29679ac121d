//! The pages in a real browser: headless Chromium, driven over WebDriver by chromedriver,
//! signs in and connects an account against a provider the test starts, with JavaScript
//! turned off, then disconnects and signs out. Saves a screenshot of the account page to
//! `target/screenshots/account.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver`. Without them the test is skipped,
//! unless `REQUIRE_BROWSER_TESTS=1` (set by `.ci/run`, which installs them).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use strongbox::clock::{Clock, SystemClock};

use crate::oauth::start_provider;
use crate::support::{Engine, Site};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, killed on drop.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut driver = Driver {
            child,
            base,
            http,
            session: String::new(),
            _profile: profile,
        };
        for _ in 0..100 {
            if let Ok(r) = driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await
                && r.status().is_success()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1100,1000",
                    format!("--user-data-dir={}", driver._profile.path().display()),
                ],
                // The pages must work without JavaScript: turn it off.
                "prefs": {"profile.managed_default_content_settings.javascript": 2},
            },
        }}});
        let created = driver.call("POST", "/session", Some(caps)).await;
        driver.session = created["sessionId"].as_str().unwrap().to_owned();
        driver
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let req = match method {
            "POST" => self.http.post(url).json(&body.unwrap_or(json!({}))),
            "DELETE" => self.http.delete(url),
            _ => self.http.get(url),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let value: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url}))).await;
    }

    async fn find(&self, css: &str) -> String {
        self.find_by("css selector", css).await
    }

    async fn find_by(&self, using: &str, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": using, "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: {v}"))
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call("POST", &format!("/element/{id}/click"), None)
            .await;
    }

    async fn click_xpath(&self, xpath: &str) {
        let id = self.find_by("xpath", xpath).await;
        self.call("POST", &format!("/element/{id}/click"), None)
            .await;
    }

    async fn fill(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call("POST", &format!("/element/{id}/clear"), None)
            .await;
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn title(&self) -> String {
        self.call("GET", "/title", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn source(&self) -> String {
        self.call("GET", "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The page source once it contains `needle` (navigation after a click may still be
    /// under way when the click returns); panics with the page after 10 s.
    async fn wait_for(&self, needle: &str) -> String {
        let mut page = String::new();
        for _ in 0..100 {
            page = self.source().await;
            if page.contains(needle) {
                return page;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{needle:?} never appeared; the page: {page} at {}",
            self.current_url().await
        )
    }

    /// The page source once the account page no longer shows `needle`.
    async fn wait_without(&self, needle: &str) -> String {
        let mut page = String::new();
        for _ in 0..100 {
            page = self.source().await;
            if page.contains("<h1>Your account</h1>") && !page.contains(needle) {
                return page;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{needle:?} never went away; the page: {page}")
    }

    async fn current_url(&self) -> String {
        self.call("GET", "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn screenshot(&self, to: &Path) {
        let b64 = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
    }

    async fn cookies(&self) -> Vec<Value> {
        self.call("GET", "/cookie", None)
            .await
            .as_array()
            .unwrap()
            .clone()
    }
}

fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots/account.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_in_headless_chromium() {
    let available = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !available {
        assert!(
            std::env::var_os("REQUIRE_BROWSER_TESTS").is_none(),
            "REQUIRE_BROWSER_TESTS is set but {CHROMIUM} or {CHROMEDRIVER} is missing"
        );
        eprintln!("skipped: install chromium and chromium-driver to run the browser test");
        return;
    }

    let (provider_base, provider) = start_provider().await;
    let site = Site::new(Engine::Sqlite).await.unwrap();
    let policies = site.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("bot.cedar"),
        "permit(principal == Agent::\"bot\", action == Action::\"run_tool\", resource)\n  \
         when { resource.provider == Provider::\"tools\" };\n",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let config = strongbox::config::Config::from_toml(&format!(
        "public_url = \"{base}\"\npolicies_dir = \"{policies}\"\n\
         [providers.acme]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"csecret\"\nlogin = true\n\
         display_name = \"Acme\"\n\
         authorize_url = \"{provider_base}/authorize\"\ntoken_url = \"{provider_base}/token\"\n\
         userinfo_url = \"{provider_base}/userinfo\"\nrevocation_url = \"{provider_base}/revoke\"\n\
         scopes = [\"openid\", \"email\"]\n\
         [providers.tools]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"csecret\"\n\
         display_name = \"Tools\"\n\
         authorize_url = \"{provider_base}/authorize\"\ntoken_url = \"{provider_base}/token\"\n\
         userinfo_url = \"{provider_base}/userinfo\"\nrevocation_url = \"{provider_base}/revoke\"\n\
         scopes = [\"files.read\"]\n\
         [tools.\"tools.list\"]\nprovider = \"tools\"\nmethod = \"GET\"\nurl = \"{provider_base}/api/files\"\n\
         scopes = [\"files.read\"]\ndescription = \"Lists your files\"\n\
         [tools.\"acme.secret\"]\nprovider = \"acme\"\nmethod = \"GET\"\nurl = \"{provider_base}/api/secret\"\n\
         scopes = [\"email\"]\n",
        policies = policies.display()
    ))
    .unwrap();
    site.ok(&["keys", "init"]);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state =
        strongbox::AppState::build(config, site.db().await, site.vault().await, clock).unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            strongbox::app(state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });

    let d = Driver::start().await;

    // The sign-in page: one button per sign-in provider; "tools" is connect-only.
    d.go(&format!("{base}/")).await;
    assert_eq!(d.title().await, "Sign in · Strongbox");
    let page = d.source().await;
    assert!(page.contains("Sign in with Acme"), "{page}");
    assert!(!page.contains("/login/tools"), "{page}");

    // Sign in: the provider approves at once and redirects back to the callback.
    d.click("a[href=\"/login/acme\"]").await;
    d.wait_for("<h1>Your account</h1>").await;
    assert_eq!(d.title().await, "Your account · Strongbox");
    assert_eq!(d.current_url().await, format!("{base}/"));
    let page = d.source().await;
    assert!(page.contains("acme — alice-sub"), "{page}");
    assert!(page.contains("(this browser)"), "{page}");
    let cookies = d.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "strongbox")
        .expect("a session cookie");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Lax", "{session}");

    // Connect a second provider with the scopes typed into the form.
    d.fill(
        "form[action=\"/connect/tools\"] input[name=scopes]",
        "files.read,files.write",
    )
    .await;
    d.click("form[action=\"/connect/tools\"] button").await;
    let page = d
        .wait_for("<td>tools</td><td>files.read files.write</td><td>active</td>")
        .await;
    d.screenshot(&screenshot_path()).await;
    eprintln!("screenshot: {}", screenshot_path().display());

    // No token is ever in the page.
    for t in provider.lock().unwrap().issued.clone() {
        assert!(!page.contains(&t), "a token reached the page");
    }

    // Disconnect (a CSRF-protected form post, with the browser's own Origin header).
    let before = provider.lock().unwrap().revoked.len();
    d.click_xpath("//tr[td[1]='tools']//button").await;
    let page = d.wait_without("<td>tools</td>").await;
    assert!(page.contains("<td>acme</td>"), "{page}");
    assert_eq!(provider.lock().unwrap().revoked.len(), before + 1);

    consent_in_chromium(&d, &site, &base).await;

    // Sign out: back to the sign-in page, and the old session is gone.
    // The form post's navigation may still be under way when the click returns: wait for
    // its answer before loading the page again, or the load could cancel the post.
    d.click("form[action=\"/logout\"] button").await;
    d.wait_for("Sign in to manage the accounts").await;
    d.go(&format!("{base}/")).await;
    assert_eq!(d.title().await, "Sign in · Strongbox");

    d.call("DELETE", "", None).await;
    server.abort();
}

/// An agent asks for access: the consent page in the browser, Deny and then Approve, each
/// ending at the agent's redirect URI; the grant is then on the account page.
async fn consent_in_chromium(d: &Driver, site: &Site, base: &str) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::get(move |uri: axum::http::Uri| async move {
            record
                .lock()
                .unwrap()
                .push(uri.query().unwrap_or_default().to_owned());
            "The agent has your answer."
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect = format!("http://{}/cb", listener.local_addr().unwrap());
    let agent = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    site.ok(&["agents", "add", "bot", "--redirect-uri", &redirect]);
    let ask = format!(
        "{base}/oauth2/authorize?response_type=code&client_id=bot&redirect_uri={}\
         &scope=tool%3Atools.list%20tool%3Aacme.secret&state=xyz\
         &code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
        url::form_urlencoded::byte_serialize(redirect.as_bytes()).collect::<String>()
    );
    for decision in ["deny", "approve"] {
        d.go(&ask).await;
        let page = d.wait_for("<h1>Allow bot to act for you?</h1>").await;
        assert_eq!(d.title().await, "Allow bot? · Strongbox");
        assert!(page.contains("Lists your files"), "{page}");
        assert!(
            page.contains("policy does not let bot run acme.secret"),
            "{page}"
        );
        if decision == "approve" {
            let shot = screenshot_path().with_file_name("consent.png");
            d.screenshot(&shot).await;
            eprintln!("screenshot: {}", shot.display());
        }
        d.click(&format!("button[value={decision}]")).await;
        d.wait_for("The agent has your answer.").await;
        let query = seen.lock().unwrap().last().cloned().unwrap();
        let answer: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
        assert_eq!(answer["state"], "xyz", "{query}");
        assert_eq!(answer["iss"], base, "{query}");
        match decision {
            "deny" => assert_eq!(answer["error"], "access_denied", "{query}"),
            _ => assert!(answer["code"].starts_with("sbx_code_"), "{query}"),
        }
    }
    d.go(&format!("{base}/")).await;
    let page = d.wait_for("Apps with access").await;
    assert!(
        page.contains("<td>bot</td><td>tool:tools.list</td>"),
        "{page}"
    );
    agent.abort();
}
