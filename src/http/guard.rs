//! Request guards: a per-IP rate limit for the sign-in routes and a cap on query size.
//!
//! The limiter is a token bucket per client address (from the TCP peer, never from a
//! forwarded header a client could forge). Buckets are kept in memory per instance and
//! pruned when the map grows, which bounds memory under a flood of addresses.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::Error;

/// Longest query string accepted, in bytes.
pub const MAX_QUERY: usize = 4096;
/// Largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key: client address for sign-in routes, agent for `/v1`.
#[derive(Debug)]
pub struct RateLimiter<K = IpAddr> {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    pub fn new(per_second: f64, burst: u32) -> RateLimiter<K> {
        RateLimiter {
            per_second,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`; `Err(seconds)` to wait when the bucket is empty.
    pub fn take(&self, ip: K) -> Result<(), u64> {
        let now = Instant::now();
        let Ok(mut map) = self.buckets.lock() else {
            return Ok(());
        };
        if map.len() >= MAX_TRACKED {
            let (rate, burst) = (self.per_second, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = map.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * self.per_second).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            // Whole seconds until one token is back, at least one.
            let wait = ((1.0 - b.tokens) / self.per_second).ceil();
            Err(if wait.is_finite() && wait >= 1.0 {
                wait as u64
            } else {
                1
            })
        }
    }
}

/// Rate-limits by the TCP peer's address.
pub async fn rate_limit(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    match app.limiter.take(ip) {
        Ok(()) => next.run(req).await,
        Err(wait) => Error::RateLimited(wait).into_response(),
    }
}

/// Refuses oversized query strings before any handler parses them.
pub async fn limit_query(req: Request, next: Next) -> Response {
    if req.uri().query().is_some_and(|q| q.len() > MAX_QUERY) {
        return Error::TooLarge.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_are_per_address() {
        let l = RateLimiter::new(1.0, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.take(a).is_ok());
        }
        assert_eq!(l.take(a), Err(1));
        assert!(l.take(b).is_ok(), "another address has its own bucket");
    }
}
