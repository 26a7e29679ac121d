//! Request guards: the sign-in routes' rate limit per client address, and a cap on query
//! size. The limiters themselves and how the client address is found are in
//! [`crate::limits`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::Error;

/// Longest query string accepted, in bytes.
pub const MAX_QUERY: usize = 4096;
/// Largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// The client address of a request (see [`crate::limits`]): the TCP peer, or what a
/// trusted proxy in front of it says.
pub fn client_address(
    app: &AppState,
    connect: Option<&ConnectInfo<SocketAddr>>,
    headers: &HeaderMap,
) -> IpAddr {
    let peer = connect.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let values = |name: &'static str| {
        headers
            .get_all(name)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
    };
    app.limits
        .client_address(peer, values("x-forwarded-for"), values("forwarded"))
}

/// [`client_address`] from a request's parts.
pub fn client_address_of(app: &AppState, parts: &Parts) -> IpAddr {
    client_address(app, parts.extensions.get(), &parts.headers)
}

/// Rate-limits the sign-in routes per client address.
pub async fn rate_limit(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let client = client_address(&app, req.extensions().get(), req.headers());
    match app.limits.signin(client) {
        Ok(()) => next.run(req).await,
        Err(wait) => Error::RateLimited(wait.0).into_response(),
    }
}

/// Refuses oversized query strings before any handler parses them.
pub async fn limit_query(req: Request, next: Next) -> Response {
    if req.uri().query().is_some_and(|q| q.len() > MAX_QUERY) {
        return Error::TooLarge.into_response();
    }
    next.run(req).await
}
