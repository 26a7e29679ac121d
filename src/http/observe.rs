//! Layers that watch every request: its request id (kept from `x-request-id` when well
//! formed, made otherwise, echoed on every response), one access-log line, the request
//! metrics, and the inbound timeout.
//!
//! The access log names the method, the matched route template (never the raw path, which
//! may carry ids), the status, the latency and the request id: never a header value, a
//! cookie, a query string or a body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::error::Error;
use crate::metrics::Metrics;

/// The request header that carries the request id, both ways.
pub const REQUEST_ID: &str = "x-request-id";
/// The route label of a request no route matched.
const UNMATCHED: &str = "unmatched";

/// Whether `id` may be kept as a request id: 1 to 64 letters, digits, `-` or `_`.
pub fn valid_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The request id the layers gave `extensions`' request (a new one if none: the layers
/// are not in front of this request).
pub fn request_id_of(extensions: &axum::http::Extensions) -> String {
    extensions
        .get::<RequestId>()
        .and_then(|r| r.header_value().to_str().ok())
        .filter(|v| valid_request_id(v))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// Makes UUID v7 request ids.
#[derive(Clone, Copy, Debug)]
struct MakeV7;

impl MakeRequestId for MakeV7 {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// Drops an incoming request id that is not well formed, so a new one is made for it.
async fn drop_malformed_id(mut req: Request, next: Next) -> Response {
    let keep = {
        let mut ids = req.headers().get_all(REQUEST_ID).iter();
        match (ids.next(), ids.next()) {
            (Some(v), None) => v.to_str().is_ok_and(valid_request_id),
            _ => false,
        }
    };
    if !keep {
        req.headers_mut().remove(REQUEST_ID);
    }
    next.run(req).await
}

fn route_of(req: &Request) -> &str {
    req.extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
}

/// Counts the request by method, route template and status, with its latency.
async fn record(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = route_of(&req).to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics.request(
        method.as_str(),
        &route,
        resp.status().as_u16(),
        start.elapsed(),
    );
    resp
}

/// Request ids, the access log and the request metrics, around `router`'s routes (inside
/// `Router::layer`, so the matched route is known).
pub fn observed<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    metrics: Arc<Metrics>,
) -> Router<S> {
    let access_log = TraceLayer::new_for_http()
        .make_span_with(|req: &Request| {
            let id = req
                .extensions()
                .get::<RequestId>()
                .and_then(|r| r.header_value().to_str().ok())
                .unwrap_or_default();
            tracing::info_span!(
                "request",
                method = %req.method(),
                route = %route_of(req),
                request_id = %id,
            )
        })
        .on_request(())
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
        .on_response(|resp: &Response, latency: Duration, _: &Span| {
            tracing::info!(
                status = resp.status().as_u16(),
                latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                "request answered"
            );
        });
    router.layer(
        ServiceBuilder::new()
            .layer(middleware::from_fn(drop_malformed_id))
            .layer(SetRequestIdLayer::x_request_id(MakeV7))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(access_log)
            .layer(middleware::from_fn_with_state(metrics, record)),
    )
}

/// The timeout's bare 503 as the problem document every other error is.
async fn timeout_problem(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE
        && !resp.headers().contains_key(header::CONTENT_TYPE)
    {
        return Error::RequestTimeout.into_response();
    }
    resp
}

/// Abandons a request not answered within `timeout` (503 `request_timeout`).
pub fn with_timeout<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    timeout: Duration,
) -> Router<S> {
    router.layer(
        ServiceBuilder::new()
            .layer(middleware::from_fn(timeout_problem))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                timeout,
            )),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn stack(timeout: Duration) -> (Router, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let router = Router::new()
            .route(
                "/slow/{n}",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/fast", get(|| async { "ok" }));
        let router = observed(with_timeout(router, timeout), Arc::clone(&metrics));
        (router, metrics)
    }

    async fn get_with(router: &Router, uri: &str, id: Option<&str>) -> Response {
        let mut req = axum::http::Request::builder().uri(uri);
        if let Some(id) = id {
            req = req.header(REQUEST_ID, id);
        }
        router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_slow_request_is_abandoned_with_a_problem_document() {
        let (router, metrics) = stack(Duration::from_millis(50));
        let resp = get_with(&router, "/slow/7", None).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert!(resp.headers().contains_key(REQUEST_ID));
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "request_timeout", "{body}");
        let text = metrics.render();
        assert!(
            text.contains(
                "strongbox_http_requests_total{method=\"GET\",route=\"/slow/{n}\",status=\"503\"} 1"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn request_ids_are_kept_only_when_well_formed() {
        let (router, _) = stack(Duration::from_secs(5));
        let kept = get_with(&router, "/fast", Some("abc-DEF_123")).await;
        assert_eq!(kept.headers()[REQUEST_ID], "abc-DEF_123");
        for bad in ["", "has space", "semi;colon", &"x".repeat(65)] {
            let resp = get_with(&router, "/fast", Some(bad)).await;
            let id = resp.headers()[REQUEST_ID].to_str().unwrap();
            assert_ne!(id, bad);
            assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        }
        let fresh = get_with(&router, "/nowhere", None).await;
        assert_eq!(fresh.status(), StatusCode::NOT_FOUND);
        assert!(fresh.headers().contains_key(REQUEST_ID));
    }
}
