//! Operations routes: `/healthz`, `/readyz`, `/metrics` (Prometheus text: this app's
//! recorder, then the KEK gauges read from the vault).

use std::fmt::Write;

use super::AppState;
use super::bodies::{Health, Readiness};
use crate::error::Error;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

/// `GET /healthz` — the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    summary = "Process up",
    responses((status = 200, description = "Up", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /readyz` — the database answers and the primary KEK unseals.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    summary = "Database and keys usable",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "code: not_ready", body = crate::error::Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(app): State<AppState>) -> Result<Json<Readiness>, Error> {
    app.db
        .ping()
        .await
        .map_err(|_| Error::NotReady("the database is unreachable".into()))?;
    let primary = app.vault.check_ready().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        Error::NotReady("the vault keys cannot be unsealed".into())
    })?;
    Ok(Json(Readiness {
        status: "ready",
        primary_kek: primary,
    }))
}

/// `GET /metrics` — requests, releases, tool runs, refreshes, denials, rate-limit hits and
/// audit commits; then key age, records and wraps per KEK version.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    summary = "Prometheus text",
    responses((status = 200, description = "Metrics", content_type = "text/plain"))
)]
pub async fn metrics(State(app): State<AppState>) -> Result<impl IntoResponse, Error> {
    let status = app.vault.status().await?;
    let now = app.clock.unix();
    let mut out = app.metrics.render();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "# HELP strongbox_kek_age_seconds Age of each KEK version."
    );
    let _ = writeln!(out, "# TYPE strongbox_kek_age_seconds gauge");
    for v in &status.versions {
        let _ = writeln!(
            out,
            "strongbox_kek_age_seconds{{version=\"{}\",state=\"{}\"}} {}",
            v.version,
            v.state,
            now - v.created_at
        );
    }
    let _ = writeln!(
        out,
        "# HELP strongbox_kek_records Records sealed under each KEK version."
    );
    let _ = writeln!(out, "# TYPE strongbox_kek_records gauge");
    for v in &status.versions {
        let _ = writeln!(
            out,
            "strongbox_kek_records{{version=\"{}\"}} {}",
            v.version, v.records
        );
    }
    let _ = writeln!(
        out,
        "# HELP strongbox_kek_wraps_total DEK wraps performed under each KEK version."
    );
    let _ = writeln!(out, "# TYPE strongbox_kek_wraps_total counter");
    for v in &status.versions {
        let _ = writeln!(
            out,
            "strongbox_kek_wraps_total{{version=\"{}\"}} {}",
            v.version, v.wraps
        );
    }
    let _ = writeln!(
        out,
        "# HELP strongbox_kek_primary_age_seconds Age of the primary KEK."
    );
    let _ = writeln!(out, "# TYPE strongbox_kek_primary_age_seconds gauge");
    let _ = writeln!(
        out,
        "strongbox_kek_primary_age_seconds {}",
        status.primary_age.unwrap_or(-1)
    );
    let _ = writeln!(
        out,
        "# HELP strongbox_kek_rotation_due 1 when the primary KEK is older than rotation_period."
    );
    let _ = writeln!(out, "# TYPE strongbox_kek_rotation_due gauge");
    let _ = writeln!(
        out,
        "strongbox_kek_rotation_due {}",
        u8::from(status.rotation_due)
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    ))
}
