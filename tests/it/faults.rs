//! Faults under release load: PostgreSQL restarted under a running service, and the
//! service itself killed with SIGKILL. Either way, every release a client saw answered
//! `200` has its `credential.released` event, and the trail verifies.
//!
//! The restart runs against a private, throwaway PostgreSQL instance (`initdb` into a
//! temporary directory, its own port), never the machine's shared cluster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use strongbox::agents::{Grant, secret_text, token_text};
use strongbox::audit::{Actor, Event, Kind};
use strongbox::clock::{Clock, SystemClock};
use strongbox::secret::AccessToken;
use strongbox::store::Db;
use strongbox::vault::{Scopes, TokenSet, Vault};
use tower::ServiceExt;

use crate::support::Site;

const POLICY: &str = r#"permit(principal == Agent::"loader", action == Action::"fetch_credential", resource == Provider::"acme");"#;

/// The service's configuration: one provider, a policy letting the agent fetch it, and the
/// agent limits off.
fn config_text(policies: &Path) -> String {
    format!(
        "policies_dir = \"{}\"\n[limits]\nagent_user_per_second = 0\nagent_per_second = 0\n\
         [providers.acme]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"cs\"\n\
         authorize_url = \"http://127.0.0.1:9/a\"\ntoken_url = \"http://127.0.0.1:9/t\"\n",
        policies.display()
    )
}

/// A user with a warm, unexpired token, an agent and a delegation; returns the agent's
/// `Authorization` value and the delegation token.
async fn release_grant(state: &strongbox::AppState, vault: &Vault, db: &Db) -> (String, String) {
    let clock = SystemClock;
    let user = "fault-user";
    let mut tx = db.begin().await.unwrap();
    strongbox::store::users::insert(&mut tx, user, clock.unix())
        .await
        .unwrap();
    let tokens = TokenSet {
        access_token: AccessToken::new("at-fault-not-a-real-token".into()),
        refresh_token: None,
        id_token: None,
        token_type: "Bearer".into(),
        expires_at: Some(clock.unix() + 86_400),
        scopes: vec!["read".into()],
    };
    let event = Event::new(Kind::CredentialStored, Actor::Cli, format!("user:{user}"));
    vault
        .store(&mut tx, event, user, "acme", &tokens, Scopes::Replace)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (agent, secret) = state
        .agents
        .add("loader", &Default::default(), Actor::Cli)
        .await
        .unwrap();
    let secret = secret.unwrap();
    let grant = Grant {
        agent: "loader".into(),
        tools: vec![],
        providers: vec!["acme".into()],
        ttl: 3600,
    };
    let mut tx = db.begin().await.unwrap();
    let (dlg, _) = state
        .agents
        .delegate(&mut tx, user, &agent, &grant)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (
        format!("Bearer {}", secret_text(&secret).as_str()),
        token_text(&dlg).as_str().to_owned(),
    )
}

/// The request ids of every `credential.released` event.
async fn released_ids(url: &str) -> Vec<String> {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT request_id FROM audit_event WHERE kind = 'credential.released'")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// Asserts that every id in `ok` (answered `200`) has its event; returns the event count.
async fn all_audited(url: &str, ok: &BTreeSet<String>) -> usize {
    let events = released_ids(url).await;
    let audited: BTreeSet<&str> = events.iter().map(String::as_str).collect();
    let missing: Vec<&String> = ok
        .iter()
        .filter(|id| !audited.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} releases answered 200 without an audit event, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    events.len()
}

/// A private PostgreSQL instance in a temporary directory, run as the `postgres` user.
struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// Initialises and starts one; `None` (after saying why) when this machine cannot,
    /// unless `REQUIRE_POSTGRES_TESTS=1`, where that fails the test.
    fn start() -> Option<PrivatePostgres> {
        let skip = |why: String| {
            let required = std::env::var("REQUIRE_POSTGRES_TESTS").is_ok_and(|v| v == "1");
            assert!(!required, "cannot run a private PostgreSQL instance: {why}");
            eprintln!("skipping: cannot run a private PostgreSQL instance: {why}");
            None
        };
        let Some(bin) = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
                .max()
        }) else {
            return skip("no initdb and pg_ctl under /usr/lib/postgresql/*/bin".into());
        };
        let dir = tempfile::tempdir().unwrap();
        let owned = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status();
        if !owned.is_ok_and(|s| s.success()) {
            return skip("cannot hand a directory to the postgres user".into());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePostgres { bin, dir, port };
        let data = pg.data();
        let init = pg
            .as_postgres("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output();
        match init {
            Ok(out) if out.status.success() => {}
            Ok(out) => return skip(format!("initdb: {}", String::from_utf8_lossy(&out.stderr))),
            Err(e) => return skip(format!("runuser: {e}")),
        }
        pg.up();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn as_postgres(&self, program: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .stdout(Stdio::null());
        c
    }

    fn pg_ctl(&self, args: &[&str]) {
        let out = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        self.pg_ctl(&[
            "-w",
            "-t",
            "30",
            "-l",
            &log.to_string_lossy(),
            "-o",
            &options,
            "start",
        ]);
    }

    /// Stops it the hard way (as a crash would): no checkpoint, clients cut off.
    fn down(&self) {
        self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stderr(Stdio::null())
            .status();
    }
}

/// What the load saw: the ids answered `200`, and every other answer (status, body).
#[derive(Default)]
struct Seen {
    ok: BTreeSet<String>,
    /// Ids answered `200` that were sent after the database was down and answered before
    /// it was started again: there must be none.
    ok_while_down: Vec<String>,
    other: Vec<(u16, serde_json::Value)>,
}

mod postgres_restart_under_releases {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::postgres_restart_under_releases().await;
    }
}

/// Releases run in process while the database is stopped and started again: the service
/// answers `503 database_unavailable` while it is down, `200` again once it is back (same
/// pool, no restart), and every `200` has its event.
async fn postgres_restart_under_releases() {
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };
    crate::support::sql(&pg.url("postgres"), "CREATE DATABASE strongbox").await;
    let url = pg.url("strongbox");
    let db = Db::connect(&url).await.unwrap();
    db.migrate().await.unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let vault = Arc::new(Vault::new(
        db.clone(),
        crate::support::fixed_root(4),
        Default::default(),
        Arc::clone(&clock),
    ));
    vault.init(Actor::Cli).await.unwrap();
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("loader.cedar"), POLICY).unwrap();
    let config = strongbox::config::Config::from_toml(&config_text(policies.path())).unwrap();
    let state = strongbox::AppState::build(config, db.clone(), Arc::clone(&vault), clock).unwrap();
    let (auth, dlg) = release_grant(&state, &vault, &db).await;
    let app = strongbox::app(state);

    // (down since, starting again at): a 200 sent after the first and answered before the
    // second would be a release without a durable event.
    let window: Arc<Mutex<(Option<Instant>, Option<Instant>)>> = Arc::default();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (app, auth, dlg) = (app.clone(), auth.clone(), dlg.clone());
            let (window, seen, stop) = (Arc::clone(&window), Arc::clone(&seen), Arc::clone(&stop));
            tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("w{w}-{i}");
                    let req = Request::post("/v1/credentials/acme")
                        .header("authorization", &auth)
                        .header("strongbox-delegation", &dlg)
                        .header("x-request-id", &id)
                        .header("content-type", "application/json")
                        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                            [10, 9, 9, 9],
                            1,
                        ))))
                        .body(Body::from("{}"))
                        .unwrap();
                    let sent = Instant::now();
                    let resp = app.clone().oneshot(req).await.unwrap();
                    let answered = Instant::now();
                    let status = resp.status().as_u16();
                    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                        .await
                        .unwrap();
                    let mut seen = seen.lock().unwrap();
                    if status == 200 {
                        let (down, up) = *window.lock().unwrap();
                        if down.is_some_and(|d| sent > d) && up.is_none_or(|u| answered < u) {
                            seen.ok_while_down.push(id.clone());
                        }
                        seen.ok.insert(id);
                    } else {
                        let json = serde_json::from_slice(&body).unwrap_or_default();
                        seen.other.push((status, json));
                    }
                }
            })
        })
        .collect();
    let count = |seen: &Arc<Mutex<Seen>>| {
        let s = seen.lock().unwrap();
        (s.ok.len(), s.other.len())
    };
    async fn wait_for(what: &str, deadline: Duration, done: impl Fn() -> bool) {
        let until = Instant::now() + deadline;
        while !done() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok_before, _) = count(&seen);
    assert!(ok_before > 0, "releases succeed before the restart");
    pg.down();
    window.lock().unwrap().0 = Some(Instant::now());
    // Down until every worker has had a request refused (each waits at most the pool's
    // acquire timeout for a connection that cannot come).
    wait_for(
        "503s while the database is down",
        Duration::from_secs(15),
        || count(&seen).1 >= 8,
    )
    .await;
    let (ok_down, _) = count(&seen);
    // Marked before the start: the server may accept connections before `pg_ctl` has
    // seen that it is ready.
    window.lock().unwrap().1 = Some(Instant::now());
    pg.up();
    wait_for(
        "releases after the restart",
        Duration::from_secs(15),
        || count(&seen).0 >= ok_down + 50,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.ok_while_down.is_empty(),
        "200 while down: {:?}",
        seen.ok_while_down
    );
    for (status, body) in &seen.other {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["code"], "database_unavailable", "{body}");
    }
    let events = all_audited(&url, &seen.ok).await;
    eprintln!(
        "{} releases answered 200 ({ok_before} before the stop), {} answered 503, {events} audited",
        seen.ok.len(),
        seen.other.len()
    );
    assert!(events >= seen.ok.len());
    strongbox::audit::verify(&db).await.unwrap();
    db.close().await;

    // An instance started while the server is still down opens the database once it is
    // up, although that takes longer than a request waits for a connection.
    pg.down();
    let opening = tokio::spawn(async move { Db::connect(&url).await.map(|db| db.backend()) });
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.up();
    assert!(
        opening.await.unwrap().is_ok(),
        "opened after the server came up"
    );
}

mod serve_killed_under_releases {
    use crate::support::{Engine, Site};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::serve_killed_under_releases(Site::new(Engine::Sqlite).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(site) = Site::new(Engine::Postgres).await {
            super::serve_killed_under_releases(site).await;
        }
    }
}

/// `strongbox serve` killed with SIGKILL while 16 connections release: after a restart
/// (and while it serves again), every release a client saw answered `200` is in the trail
/// and `audit verify` passes.
async fn serve_killed_under_releases(site: Site) {
    site.ok(&["keys", "init"]);
    let policies = site.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("loader.cedar"), POLICY).unwrap();
    let config = config_text(&policies);
    std::fs::write(site.path().join("strongbox.toml"), &config).unwrap();
    let (auth, dlg) = {
        let (db, vault) = (site.db().await, site.vault().await);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let config = strongbox::config::Config::from_toml(&config).unwrap();
        let state =
            strongbox::AppState::build(config, db.clone(), Arc::clone(&vault), clock).unwrap();
        let grant = release_grant(&state, &vault, &db).await;
        db.close().await;
        grant
    };
    let ok: Arc<Mutex<BTreeSet<String>>> = Arc::default();

    let (mut child, addr) = serve(&site);
    let load = tokio::spawn(releases(
        addr.clone(),
        auth.clone(),
        dlg.clone(),
        "a",
        Arc::clone(&ok),
    ));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let before = ok.lock().unwrap().len();
    child.kill().unwrap(); // SIGKILL, mid-load
    child.wait().unwrap();
    load.await.unwrap();
    let killed = ok.lock().unwrap().len();
    assert!(before > 0, "releases succeeded before the kill");

    let (mut child, addr) = serve(&site);
    let load = tokio::spawn(releases(addr, auth, dlg, "b", Arc::clone(&ok)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Checked while the restarted service is under load.
    let verified = site.ok(&["audit", "verify"]);
    assert!(verified.contains("audit trail intact"), "{verified}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    load.await.unwrap();
    let ok = ok.lock().unwrap().clone();
    assert!(ok.len() > killed, "the restarted service released again");
    let events = all_audited(&site.url, &ok).await;
    eprintln!(
        "{:?}: {killed} releases answered 200 before the kill, {} in all; {events} audited",
        site.engine,
        ok.len()
    );
    let verified = site.ok(&["audit", "verify"]);
    assert!(verified.contains("audit trail intact"), "{verified}");
}

/// Starts `strongbox serve` on a free port; returns it and its address.
fn serve(site: &Site) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = site
        .cmd(&["serve"])
        .env("STRONGBOX_LISTEN", "127.0.0.1:0")
        .env("STRONGBOX_LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("serve exited early").unwrap();
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if json["fields"]["message"] == "strongbox listening" {
            break json["fields"]["addr"].as_str().unwrap().to_owned();
        }
    };
    // Keep reading so that a full pipe never stalls the service.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

/// 16 keep-alive connections releasing until the service goes away; the ids answered
/// `200` go into `ok`.
async fn releases(
    addr: String,
    auth: String,
    dlg: String,
    tag: &str,
    ok: Arc<Mutex<BTreeSet<String>>>,
) {
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            let (addr, auth, dlg, ok) = (addr.clone(), auth.clone(), dlg.clone(), Arc::clone(&ok));
            let tag = format!("{tag}{c}");
            tokio::spawn(async move {
                let Ok(stream) = tokio::net::TcpStream::connect(&addr).await else {
                    return;
                };
                let (rd, mut w) = stream.into_split();
                let mut r = tokio::io::BufReader::new(rd);
                for i in 0.. {
                    let id = format!("{tag}-{i}");
                    match exchange(&mut w, &mut r, &addr, &auth, &dlg, &id).await {
                        Ok(200) => {
                            ok.lock().unwrap().insert(id);
                        }
                        Ok(status) => panic!("release answered {status}"),
                        // The service was killed: this answer never came.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// One release on a keep-alive connection; its status.
async fn exchange(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    r: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    addr: &str,
    auth: &str,
    dlg: &str,
    id: &str,
) -> std::io::Result<u16> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "POST /v1/credentials/acme HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\n\
         Strongbox-Delegation: {dlg}\r\nX-Request-Id: {id}\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\n\r\n{{}}"
    );
    w.write_all(request.as_bytes()).await?;
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let mut len = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v
                .trim()
                .parse()
                .map_err(|_| std::io::ErrorKind::InvalidData)?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok(status)
}
