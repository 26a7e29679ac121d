//! `strongbox serve`: open the database and vault, bind, serve until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;

use crate::audit::Actor;
use crate::bootstrap::{CliError, open_db, open_vault};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;

use super::{AppState, app};

/// Runs the service until a shutdown signal; in-flight requests are allowed to finish.
pub async fn run(config: Config) -> Result<ExitCode, CliError> {
    if !config.https {
        tracing::warn!(
            public_url = %config.public_url,
            "public_url is plain http: development mode (session cookie without Secure, \
             inline secrets and a generated root key allowed)"
        );
    }
    let db = open_db(&config).await?;
    let vault = open_vault(&config, db.clone(), true).await?;
    if let Some(v) = vault.init(Actor::System).await? {
        tracing::info!(version = v, "created the first KEK");
    }
    let primary = vault.check_ready().await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| CliError(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener.local_addr()?;
    // Answers go out when written, not held back waiting for the previous one's ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state = AppState::build(config, db.clone(), Arc::new(vault), clock)?;
    tokio::spawn(housekeeping(state.clone()));
    tokio::spawn(refresher(state.clone()));
    tracing::info!(%addr, backend = db.backend().name(), primary_kek = primary, "strongbox listening");
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    db.close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Every ten minutes: delete sessions past their timeouts, expired sign-in flows,
/// delegations, grants (with their tokens), codes and assertion ids.
async fn housekeeping(app: AppState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
    loop {
        tick.tick().await;
        let sessions = app.sessions.purge().await;
        let flows = app.oauth.purge_flows().await;
        match (sessions, flows) {
            (Ok(s), Ok(f)) => tracing::debug!(sessions = s, flows = f, "purged expired records"),
            (Err(e), _) => tracing::warn!(error = %e, "purging sessions failed"),
            (_, Err(e)) => tracing::warn!(error = %e, "purging flows failed"),
        }
        if let Err(e) = app.agents.purge().await {
            tracing::warn!(error = %e, "purging expired delegations failed");
        }
        if let Err(e) = app.grants.purge().await {
            tracing::warn!(error = %e, "purging expired grants, codes and assertion ids failed");
        }
    }
}

/// Tokens that expire within this many seconds are refreshed in the background.
const REFRESH_AHEAD: i64 = 300;

/// Every 30 s: refresh access tokens nearing expiry, four at a time, each after a random
/// delay of up to two seconds so instances sharing a database do not move in step (the
/// refresh lease makes a collision harmless anyway).
async fn refresher(app: AppState) {
    let limit = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        tick.tick().await;
        let now = app.clock.unix();
        let ids = match app.vault.expiring(now + REFRESH_AHEAD, now, 100).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "listing expiring tokens failed");
                continue;
            }
        };
        for id in ids {
            let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                return;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let mut r = [0u8; 2];
                let jitter = match crate::crypto::fill_random(&mut r) {
                    Ok(()) => u64::from(u16::from_le_bytes(r)) % 2000,
                    Err(_) => 1000,
                };
                tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                match app.broker.refresh_ahead(&id, REFRESH_AHEAD).await {
                    Ok(true) => tracing::debug!(connection = %id, "refreshed ahead of expiry"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::info!(connection = %id, error = %e, "background refresh failed")
                    }
                }
                drop(permit);
            });
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
}
