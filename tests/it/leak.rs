//! Nothing in the clear at rest or in logs: known tokens are written through the vault,
//! rewrapped and opened with every log at TRACE, then the raw SQLite files, a `pg_dump`,
//! and every captured log line are scanned for them.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use crate::support::{Site, seed};

#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line this test process emits, at TRACE.
pub(crate) fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .init();
        captured
    })
}

fn hits(haystack: &[u8], canaries: &[String]) -> Vec<String> {
    canaries
        .iter()
        .filter(|c| haystack.windows(c.len()).any(|w| w == c.as_bytes()))
        .cloned()
        .collect()
}

async fn no_token_in_the_clear(site: Site) {
    let logs = logs();
    let prefix = format!("canary{}x", uuid::Uuid::new_v4().simple());
    let canaries: Vec<String> = (0..50)
        .flat_map(|i| [format!("{prefix}{i}"), format!("{prefix}{i}-refresh")])
        .collect();
    site.ok(&["keys", "init"]);
    let vault = site.vault().await;
    seed(&vault, 5, 50, &prefix).await;
    site.ok(&["keys", "rotate"]);
    let mut cli_logs = Vec::new();
    for args in [
        &["keys", "rewrap"][..],
        &["keys", "verify"],
        &["audit", "verify"],
        &["keys", "status", "--json"],
    ] {
        let out = site.cmd(args).env("RUST_LOG", "trace").output().unwrap();
        assert!(out.status.success(), "{args:?}");
        cli_logs.extend(out.stdout);
        cli_logs.extend(out.stderr);
    }
    assert!(
        !hits(&cli_logs, &canaries).iter().any(|_| true),
        "CLI output leaked a token"
    );
    let captured = logs.0.lock().unwrap().clone();
    assert!(!captured.is_empty(), "logs were captured");
    assert_eq!(
        hits(&captured, &canaries),
        Vec::<String>::new(),
        "a log line leaked a token"
    );

    let at_rest = crate::support::at_rest(&site);
    assert!(at_rest.len() > 10_000, "scanned {} bytes", at_rest.len());
    assert!(
        hits(&at_rest, &["p0".to_owned()]).len() == 1,
        "the scan sees plaintext metadata"
    );
    assert_eq!(
        hits(&at_rest, &canaries),
        Vec::<String>::new(),
        "a token is stored in the clear"
    );
}

mod no_token_in_the_clear {
    use crate::support::{Engine, Site};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::no_token_in_the_clear(Site::new(Engine::Sqlite).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(site) = Site::new(Engine::Postgres).await {
            super::no_token_in_the_clear(site).await;
        }
    }
}
