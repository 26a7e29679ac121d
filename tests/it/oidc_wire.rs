//! OpenID Connect provider answers at the edges, against the in-process provider of
//! `oidc`: scope claims only in UserInfo (Core §5.4) and a UserInfo answer about someone
//! else (§5.3.2); an endless chunked JWKS, which must be cut at the 1 MiB cap rather than
//! read whole; and slow discovery, which must not keep other writers waiting on SQLite.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use strongbox::clock::{Clock, SystemClock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::oauth::Browser;
use crate::oidc::start;
use crate::support::{Engine, Site, count};

/// What the endless JWKS would send in all: far past the cap.
const ENDLESS: usize = 50 << 20;

/// An app whose provider `idp` is the OIDC provider at `base`, found by discovery.
async fn app(site: &Site, base: &str, timeout: &str) -> (Browser, strongbox::AppState) {
    site.ok(&["keys", "init"]);
    let config = strongbox::config::Config::from_toml(&format!(
        "public_url = \"http://127.0.0.1:8080\"\nprovider_timeout = \"{timeout}\"\n\
         [providers.idp]\nkind = \"oidc\"\nissuer = \"{base}\"\n\
         client_id = \"cid\"\nclient_secret = \"csecret\"\nlogin = true\n"
    ))
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state =
        strongbox::AppState::build(config, site.db().await, site.vault().await, clock).unwrap();
    let b = Browser {
        app: strongbox::app(state.clone()),
    };
    (b, state)
}

async fn claims_from_userinfo(site: Site) {
    let idp = start().await;
    let base = idp.lock().unwrap().base.clone();
    idp.lock().unwrap().userinfo = Some(json!({"sub": "oidc-alice",
        "email": "alice@userinfo.example", "email_verified": true, "name": "Alice Userinfo"}));
    let (b, _) = app(&site, &base, "10s").await;

    // The ID token has only `sub`: email, its verification and the name come from UserInfo.
    let cookie = b.sign_in_with("idp").await.unwrap();
    let me = b.send("GET", "/api/me", Some(&cookie), &[]).await;
    let id = &me.body["identities"][0];
    assert_eq!(
        (
            id["subject"].as_str(),
            id["email"].as_str(),
            id["name"].as_str()
        ),
        (
            Some("oidc-alice"),
            Some("alice@userinfo.example"),
            Some("Alice Userinfo")
        ),
        "{}",
        me.body
    );
    assert_eq!(idp.lock().unwrap().userinfo_calls, 1);
    let verified =
        "SELECT COUNT(*) FROM identity WHERE subject = 'oidc-alice' AND email_verified = 1";
    assert_eq!(count(&site.url, verified).await, 1);

    // A UserInfo answer about another subject is refused, and nothing of it is kept.
    idp.lock().unwrap().userinfo = Some(json!({"sub": "mallory",
        "email": "mallory@evil.example", "email_verified": true, "name": "Mallory"}));
    let refused = b.sign_in_with("idp").await.unwrap_err();
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("provider_error"))
    );
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("userinfo_subject_mismatch"),
        "{}",
        refused.body
    );
    assert!(refused.cookie.is_none());
    let kept =
        "SELECT COUNT(*) FROM identity WHERE email = 'mallory@evil.example' OR name = 'Mallory'";
    assert_eq!(count(&site.url, kept).await, 0);
    assert_eq!(count(&site.url, "SELECT COUNT(*) FROM identity").await, 1);
}

/// What the endless JWKS server saw.
#[derive(Default)]
struct Served {
    /// Body bytes written before the client hung up (or all of them).
    written: AtomicUsize,
    /// Every byte was written: the client read the answer to its end.
    completed: AtomicBool,
    ended: Notify,
}

/// Serves one request with a JSON document of [`ENDLESS`] bytes (`{"keys": [`, then
/// spaces), chunked, with no `Content-Length`, counting what it manages to write.
async fn endless_jwks() -> (String, Arc<Served>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let served = Arc::new(Served::default());
    let s = Arc::clone(&served);
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client left before asking");
            head.extend_from_slice(&buf[..n]);
        }
        let spaces = vec![b' '; 64 << 10];
        let sent = async {
            sock.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                  Transfer-Encoding: chunked\r\n\r\na\r\n{\"keys\": [\r\n",
            )
            .await?;
            while s.written.load(Ordering::SeqCst) < ENDLESS {
                sock.write_all(format!("{:x}\r\n", spaces.len()).as_bytes())
                    .await?;
                sock.write_all(&spaces).await?;
                sock.write_all(b"\r\n").await?;
                s.written.fetch_add(spaces.len(), Ordering::SeqCst);
            }
            sock.write_all(b"2\r\n]}\r\n0\r\n\r\n").await?;
            sock.flush().await
        }
        .await;
        s.completed.store(sent.is_ok(), Ordering::SeqCst);
        s.ended.notify_one();
    });
    (url, served)
}

/// A 50 MiB chunked JWKS is refused, and the read stops at the cap: the server sees the
/// client hang up long before it has written everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_jwks_is_cut_at_the_cap() {
    let idp = start().await;
    let base = idp.lock().unwrap().base.clone();
    let (jwks_url, served) = endless_jwks().await;
    idp.lock().unwrap().jwks_uri = Some(jwks_url);
    let site = Site::new(Engine::Sqlite).await.unwrap();
    // A timeout no loopback read of 50 MiB reaches: only the cap may end the read early.
    let (b, _) = app(&site, &base, "120s").await;

    let refused = b.sign_in_with("idp").await.unwrap_err();
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("provider_error")),
        "{}",
        refused.body
    );
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("response_too_large"),
        "{}",
        refused.body
    );
    tokio::time::timeout(Duration::from_secs(60), served.ended.notified())
        .await
        .expect("the JWKS server never saw the end of its answer");
    let written = served.written.load(Ordering::SeqCst);
    assert!(
        !served.completed.load(Ordering::SeqCst) && written < ENDLESS,
        "the client read {written} of {ENDLESS} bytes before giving up"
    );
}

/// While a provider's discovery is slow, another writer is not kept waiting: the sign-in
/// resolves endpoints before it opens its transaction (SQLite's one write lock).
async fn slow_discovery(site: Site) {
    let idp = start().await;
    let base = idp.lock().unwrap().base.clone();
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    idp.lock().unwrap().discovery_gate = Some((Arc::clone(&arrived), Arc::clone(&release)));
    let (b, state) = app(&site, &base, "60s").await;

    let login = tokio::spawn(async move { b.send("GET", "/login/idp", None, &[]).await });
    tokio::time::timeout(Duration::from_secs(10), arrived.notified())
        .await
        .expect("the sign-in never asked for discovery");
    let write = async {
        let mut tx = state.db.begin().await.unwrap();
        strongbox::store::users::insert(&mut tx, "concurrent-writer", 0)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    // Generous: a free write takes milliseconds; a locked one waits for the provider.
    let wrote = tokio::time::timeout(Duration::from_secs(5), write).await;
    release.notify_one();
    assert!(
        wrote.is_ok(),
        "a write waited while the sign-in was in discovery"
    );
    let started = login.await.unwrap();
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{:?}", started.body);
    assert!(
        started
            .location
            .unwrap()
            .starts_with(&format!("{base}/authorize?"))
    );
}

macro_rules! on_both_backends {
    ($($name:ident => $body:ident),*) => {$(
        mod $name {
            use crate::support::{Engine, Site};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body(Site::new(Engine::Sqlite).await.unwrap()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(site) = Site::new(Engine::Postgres).await {
                    super::$body(site).await;
                }
            }
        }
    )*};
}

on_both_backends!(
    userinfo_completes_the_id_token => claims_from_userinfo,
    slow_discovery_holds_no_write_lock => slow_discovery
);
