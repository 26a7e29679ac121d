//! The key lifecycle through the real binary, on both backends.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use strongbox::clock::{Clock, ManualClock};

use strongbox::vault::{Vault, VaultSettings};

use crate::support::{Engine, Site, seed, status_json};

macro_rules! on_both {
    ($($name:ident;)*) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::support::Site::new(crate::support::Engine::Sqlite).await.unwrap()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(site) = crate::support::Site::new(crate::support::Engine::Postgres).await {
                    super::$name(site).await;
                }
            }
        }
    )*};
}

on_both! {
    rotation_with_killed_rewrap;
    status_exits_3_when_overdue;
}

/// Init, seed 10,000 records, rotate, kill -9 a rewrap midway, resume, retire, verify.
async fn rotation_with_killed_rewrap(site: Site) {
    const RECORDS: usize = 10_000;
    let out = site.ok(&["keys", "init"]);
    assert!(out.contains("created KEK version 1"), "{out}");
    assert!(site.ok(&["keys", "init"]).contains("already initialized"));
    let mode = std::fs::metadata(site.keys_dir().join("root.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let vault = site.vault().await;
    seed(&vault, 100, RECORDS, "tok-").await;

    assert!(
        site.ok(&["keys", "rotate"])
            .contains("KEK version 2 is now primary")
    );
    let mut child = site
        .cmd(&["keys", "rewrap", "--batch", "20"])
        .spawn()
        .unwrap();
    // Kill it once some batches have committed but (most likely) before it finished.
    let started = Instant::now();
    loop {
        let s = status_json(&site);
        let moved = s["versions"][1]["records"].as_i64().unwrap();
        if moved >= 500 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let s = status_json(&site);
    let (old, new) = (
        s["versions"][0]["records"].as_i64().unwrap(),
        s["versions"][1]["records"].as_i64().unwrap(),
    );
    assert_eq!(old + new, RECORDS as i64, "no record lost by the kill");
    eprintln!("{:?}: killed rewrap at {new} of {RECORDS}", site.engine);

    let refused = site.run(&["keys", "retire", "1"]);
    assert!(!refused.status.success());
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(
        msg.contains("still protects") && msg.lines().count() == 1,
        "{msg}"
    );

    assert!(site.ok(&["keys", "rewrap"]).contains("rewrapped"));
    let s = status_json(&site);
    assert_eq!(s["versions"][0]["records"], 0);
    assert_eq!(s["versions"][1]["records"], RECORDS);
    assert_eq!(s["versions"][1]["state"], "primary");
    assert_eq!(s["versions"][0]["state"], "decrypt-only");
    assert!(s["versions"][1]["wraps"].as_i64().unwrap() >= RECORDS as i64);
    assert!(
        s["versions"][0]["created_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(s["rotation_due"], false);

    site.ok(&["keys", "retire", "1"]);
    assert_eq!(status_json(&site)["versions"][0]["state"], "retired");
    assert!(
        site.ok(&["keys", "verify"])
            .contains(&format!("all {RECORDS} records open"))
    );
    assert!(site.ok(&["audit", "verify"]).contains("audit trail intact"));

    // Rotating the root key re-seals KEKs; every record still opens with the new file.
    let before = std::fs::read(site.keys_dir().join("root.key")).unwrap();
    assert!(
        site.ok(&["keys", "rotate-root"])
            .contains("re-sealed 1 KEKs")
    );
    assert_ne!(
        std::fs::read(site.keys_dir().join("root.key")).unwrap(),
        before
    );
    assert!(!site.keys_dir().join("root.key.new").exists());
    assert!(
        site.ok(&["keys", "verify"])
            .contains(&format!("all {RECORDS} records open"))
    );
    assert!(site.ok(&["audit", "verify"]).contains("audit trail intact"));
}

/// A primary older than `rotation_period` makes `keys status` exit 3.
async fn status_exits_3_when_overdue(site: Site) {
    site.ok(&["keys", "init"]);
    assert_eq!(site.run(&["keys", "status"]).status.code(), Some(0));
    let old_clock = ManualClock::at_unix(1_000);
    let clock: std::sync::Arc<dyn Clock> = std::sync::Arc::new(old_clock);
    let root = strongbox::vault::rootkey::load(&site.keys_dir(), None, true)
        .unwrap()
        .unwrap();
    let vault = Vault::new(site.db().await, root, VaultSettings::default(), clock);
    // A KEK created "in 1970" is long overdue.
    vault.rotate(strongbox::audit::Actor::Cli).await.unwrap();
    let out = site.run(&["keys", "status", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["rotation_due"], true);
    let human = site.run(&["keys", "status"]);
    assert_eq!(human.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&human.stdout).contains("rotation is due"));
}

/// Environment, arguments, and what the one-line error must say.
type Case = (
    Vec<(&'static str, &'static str)>,
    Vec<&'static str>,
    &'static str,
);

#[tokio::test]
async fn bad_inputs_are_one_clear_line() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    let cases: Vec<Case> = vec![
        (
            vec![("STRONGBOX_VAULT__CIPHER", "des")],
            vec!["keys", "status"],
            "vault.cipher",
        ),
        (
            vec![("STRONGBOX_SESSION__IDLE_TIMEOUT", "soon")],
            vec!["check"],
            "session.idle_timeout",
        ),
        (
            vec![("STRONGBOX_ROOT_KEY", "dG9vIHNob3J0")],
            vec!["keys", "init"],
            "STRONGBOX_ROOT_KEY is not base64 of exactly 32 bytes",
        ),
        (
            vec![("STRONGBOX_DATABASE_URL", "mysql://x")],
            vec!["migrate"],
            "database_url must start with sqlite: or postgres:",
        ),
        (
            vec![("STRONGBOX_KEYS_DIR", "/etc/hostname")],
            vec!["keys", "status"],
            "cannot read /etc/hostname",
        ),
        (
            vec![],
            vec!["keys", "retire", "7"],
            "KEK version 7 does not exist",
        ),
    ];
    site.ok(&["keys", "init"]);
    for (env, args, needle) in cases {
        let out = site.cmd(&args).envs(env.clone()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} {env:?}: {err}");
        assert!(err.contains(needle), "{args:?} {env:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(!err.contains("dG9vIHNob3J0"));
    }
    let missing = site.run(&["--config", "nope.toml", "check"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("config file nope.toml does not exist")
    );
}

#[tokio::test]
async fn wrong_root_key_is_refused_clearly() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    let other = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let out = site
        .cmd(&["keys", "verify"])
        .env("STRONGBOX_ROOT_KEY", other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("wrong root key"), "{err}");
    let out = site
        .cmd(&["keys", "rotate"])
        .env("STRONGBOX_ROOT_KEY", other)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong root key"));
}

#[tokio::test]
async fn production_guards() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    let https = [("STRONGBOX_PUBLIC_URL", "https://vault.example")];
    // No root key: never invented outside development.
    let out = site.cmd(&["keys", "init"]).envs(https).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no root key"),
        "{out:?}"
    );
    assert!(!site.keys_dir().join("root.key").exists());
    // A root key file readable by others.
    site.ok(&["keys", "init"]);
    let key = site.keys_dir().join("root.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = site.cmd(&["serve"]).envs(https).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("readable by group or others"),
        "{out:?}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // An inline client secret.
    std::fs::write(
        site.path().join("strongbox.toml"),
        "[providers.acme]\nkind = \"oauth2\"\nclient_id = \"x\"\nclient_secret = \"hunter2\"\n\
         authorize_url = \"https://acme.example/auth\"\ntoken_url = \"https://acme.example/token\"\n",
    )
    .unwrap();
    let out = site.cmd(&["serve"]).envs(https).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("providers.acme.client_secret") && !err.contains("hunter2"),
        "{err}"
    );
    assert!(
        site.ok(&["check"]).contains("configuration is valid"),
        "plain http tolerates it"
    );
}

#[tokio::test]
async fn a_lost_root_key_is_not_silently_replaced() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    std::fs::remove_file(site.keys_dir().join("root.key")).unwrap();
    for args in [&["serve"][..], &["keys", "init"]] {
        let out = site.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("no root key"), "{args:?}: {err}");
        assert!(
            !site.keys_dir().join("root.key").exists(),
            "{args:?} generated a key"
        );
    }
}

#[tokio::test]
async fn providers_list_shows_catalogue_and_configuration() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    std::fs::write(
        site.path().join("strongbox.toml"),
        "[providers.google]\nclient_id = \"gid\"\nclient_secret_env = \"GOOGLE_SECRET_FOR_TEST\"\nlogin = true\n\
         [providers.acme]\nkind = \"oidc\"\nissuer = \"https://login.acme.example\"\nclient_id = \"a\"\n",
    )
    .unwrap();
    let out = site.ok(&["providers", "list"]);
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing: {out}"))
            .to_owned()
    };
    for name in [
        "google",
        "microsoft",
        "discord",
        "spotify",
        "github",
        "slack",
        "acme",
    ] {
        line(name);
    }
    assert!(
        line("google").contains("catalogue")
            && line("google").contains(" yes ")
            && line("google").contains("openid email profile")
    );
    assert!(line("spotify").contains(" no "));
    assert!(line("acme").contains("config"));
    // `check` needs the secret from the environment it names.
    let out = site.run(&["check"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("GOOGLE_SECRET_FOR_TEST is not set"));
    let out = site
        .cmd(&["check"])
        .env("GOOGLE_SECRET_FOR_TEST", "s3cret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
}

/// `check` and `serve` load `policies/*.cedar` against the schema and name what is wrong.
#[tokio::test]
async fn policies_are_validated_by_check_and_serve() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    let out = site.ok(&["check"]);
    assert!(out.contains("0 policies from 0 files"), "{out}");
    let dir = site.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("chat.cedar"),
        include_str!("../../policies/examples/chat-backend.cedar"),
    )
    .unwrap();
    let out = site.ok(&["check"]);
    assert!(out.contains("3 policies from 1 files"), "{out}");

    for (bad, expect) in [
        (
            "permit(principal == User::\"x\", action == Action::\"run_tool\", resource);",
            "bad.cedar#0",
        ),
        (
            "permit(principal, action == Action::\"run_tool\", resource) when { resource.colour == \"red\" };",
            "bad.cedar#0",
        ),
        ("permit(principal, action", "bad.cedar"),
    ] {
        std::fs::write(dir.join("bad.cedar"), bad).unwrap();
        for args in [&["check"][..], &["serve"][..]] {
            let out = site
                .cmd(args)
                .env("STRONGBOX_LISTEN", "127.0.0.1:0")
                .output()
                .unwrap();
            assert_ne!(out.status.code(), Some(0), "{args:?} accepted {bad}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(expect), "{args:?} {bad}: {err}");
        }
    }
}
