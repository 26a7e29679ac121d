//! What an operator sees of agent requests: the request id each response carries (and its
//! audit event names), one access-log line per request that holds no secret the request
//! did, and the counters `/metrics` shows next to the KEK gauges.

use axum::http::StatusCode;
use serde_json::json;

use super::{World, call, world};
use crate::support::Site;

/// `text` without its ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How many releases the audit trail records under request id `id`.
async fn released_as(site: &Site, id: &str) -> i64 {
    assert!(strongbox::http::observe::valid_request_id(id), "{id}");
    crate::support::count(
        &site.url,
        &format!(
            "SELECT COUNT(*) FROM audit_event WHERE kind = 'credential.released' \
             AND request_id = '{id}'"
        ),
    )
    .await
}

async fn observed(site: Site) {
    let World {
        state,
        app,
        cookie,
        user,
        bot_secret,
        ..
    } = world(&site).await;
    let auth = format!("Bearer {bot_secret}");
    let dlg = super::delegate(&state, &user, "bot", &["acme.items"], 900).await;
    let query_secret = format!("qs{}", uuid::Uuid::new_v4().simple());
    let session_cookie = format!("strongbox={cookie}");
    let uri = format!("/v1/credentials/acme?token={query_secret}");
    let headers = |id: &str| {
        [
            ("authorization", auth.clone()),
            ("strongbox-delegation", dlg.clone()),
            ("cookie", session_cookie.clone()),
            ("x-request-id", id.to_owned()),
        ]
    };
    let send = |id: &str| {
        let hs = headers(id);
        let app = app.clone();
        let uri = uri.clone();
        async move {
            let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            call(&app, "POST", &uri, &hs, json!({})).await
        }
    };

    // Every line of the process (other tests' too), at TRACE: ours are told by their ids.
    let logs = crate::leak::logs();
    // A well-formed incoming id is kept; a malformed one is replaced by a new UUID v7.
    let kept_id = format!("trace-{}_1", uuid::Uuid::new_v4().simple());
    let kept = send(&kept_id).await;
    let replaced = send("not valid; id").await;
    assert_eq!(kept.status, StatusCode::OK, "{}", kept.text);
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.text);
    assert_eq!(kept.headers["x-request-id"], kept_id.as_str());
    let new_id = replaced.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(uuid::Uuid::parse_str(&new_id).unwrap().get_version_num(), 7);
    // The audit events name the ids the responses carry.
    assert_eq!(released_as(&site, &kept_id).await, 1);
    assert_eq!(released_as(&site, &new_id).await, 1);

    let text = plain(&String::from_utf8_lossy(&logs.0.lock().unwrap()));
    for id in [kept_id.as_str(), new_id.as_str()] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("request answered") && l.contains(id))
            .collect();
        assert_eq!(lines.len(), 1, "{id}: {lines:?}");
        let line = lines[0];
        assert!(line.contains(" INFO "), "{line}");
        for part in [
            "method=POST",
            "route=/v1/credentials/{provider}",
            "status=200",
            "latency_ms=",
            &format!("request_id={id}"),
        ] {
            assert!(line.contains(part), "{part} missing: {line}");
        }
    }
    for secret in [&query_secret, &cookie, &bot_secret, &dlg] {
        assert!(
            !text.contains(secret.as_str()),
            "a log line leaked a secret"
        );
    }
    assert!(
        !text.contains("/v1/credentials/acme"),
        "the raw path is logged"
    );

    // A release beyond policy is denied and counted.
    let hs = super::agent(&auth, &dlg);
    let denied = call(
        &app,
        "POST",
        "/v1/credentials/acme",
        &hs,
        json!({"scopes": ["admin"]}),
    )
    .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text);

    let metrics = call(&app, "GET", "/metrics", &[], json!({})).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let m = metrics.text;
    for line in [
        "strongbox_http_requests_total{method=\"POST\",route=\"/v1/credentials/{provider}\",status=\"200\"} 2",
        "strongbox_http_requests_total{method=\"POST\",route=\"/v1/credentials/{provider}\",status=\"403\"} 1",
        "strongbox_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/credentials/{provider}\",status=\"200\"} 2",
        "strongbox_credential_releases_total{provider=\"acme\"} 2",
        "strongbox_policy_denials_total{action=\"fetch_credential\"} 1",
        "# TYPE strongbox_audit_commit_duration_seconds histogram",
        "strongbox_kek_rotation_due 0",
        "strongbox_kek_records{version=\"1\"}",
        "strongbox_kek_age_seconds{version=\"1\",state=\"primary\"}",
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
    // Two releases and a denial, each committed with its audit event.
    let batched = m
        .lines()
        .find_map(|l| l.strip_prefix("strongbox_audit_batch_events_sum "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(batched >= 2.0, "{m}");
}

super::on_both!(request_ids_logs_and_metrics, super::observed);
