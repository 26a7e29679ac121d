//! Request rate limits (SPEC §3, `[limits]`) and the client address they are keyed by.
//!
//! Four keyed limiters, each off when its rate is 0:
//! - sign-in routes, per client address (`signin_per_second`, `signin_burst`);
//! - agent routes, per (agent, user) (`agent_user_per_second`, bursts of twice that), so one
//!   chat backend serving many users is limited per user, not in total;
//! - agent routes, per agent across its users (`agent_per_second`, default off);
//! - failed agent authentications (no or an unknown agent secret), per client address, at
//!   the sign-in rates: an address whose failures ran out of budget is refused *before* its
//!   next request costs a database read. A request naming an agent that has authenticated
//!   on this instance before is let through to authentication all the same, so an attacker
//!   sharing an address with an agent cannot lock it out (each such try costs one indexed
//!   read, and needs a real agent's id).
//!
//! The client address is the TCP peer, or, only when the peer is a trusted proxy, the
//! right-most untrusted address in the one header the proxies write (`forwarded_header`:
//! `X-Forwarded-For` or `Forwarded`; the other is ignored). A client can write anything
//! into that header, but only the hops a trusted proxy appended are believed, so a forged
//! entry to their left changes nothing. IPv6 clients are limited per /64, the block one
//! subscriber is usually given.
//!
//! Limiters live in memory per instance (GCRA from `governor`) and run on the injected
//! [`Clock`], so tests move time instead of sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::Reference;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

use crate::clock::Clock;
use crate::config::{ForwardedHeader, Limits};

/// Keys tracked per limiter before idle ones are pruned (checked every [`PRUNE_EVERY`]).
const MAX_TRACKED: usize = 100_000;
/// Agents remembered as having authenticated (more are simply not exempted).
const MAX_KNOWN_AGENTS: usize = 10_000;
const PRUNE_EVERY: u32 = 1024;

/// Seconds to wait before the next request may pass (for `Retry-After`), at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait(pub u64);

/// Nanoseconds since the Unix epoch on the injected clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(u64);

impl std::ops::Add<Nanos> for Instant {
    type Output = Instant;
    fn add(self, other: Nanos) -> Instant {
        Instant(self.0.saturating_add(other.as_u64()))
    }
}

impl Reference for Instant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_sub(earlier.0))
    }
    fn saturating_sub(&self, duration: Nanos) -> Self {
        Instant(self.0.saturating_sub(duration.as_u64()))
    }
}

/// The service's [`Clock`] as a `governor` clock.
#[derive(Clone)]
pub struct LimitClock(Arc<dyn Clock>);

impl governor::clock::Clock for LimitClock {
    type Instant = Instant;
    fn now(&self) -> Instant {
        let nanos = self.0.now().unix_timestamp_nanos();
        Instant(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
    }
}

/// One keyed limiter.
struct Keyed<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, DashMapStateStore<K>, LimitClock, NoOpMiddleware<Instant>>,
    clock: LimitClock,
    calls: AtomicU32,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    /// `None` when `per_second` is 0 (the limit is off).
    fn new(per_second: u32, burst: u32, clock: &LimitClock) -> Option<Keyed<K>> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Keyed {
            limiter: RateLimiter::new(
                Quota::per_second(rate).allow_burst(burst),
                DashMapStateStore::default(),
                clock.clone(),
            ),
            clock: clock.clone(),
            calls: AtomicU32::new(0),
        })
    }

    fn take(&self, key: &K) -> Result<(), Wait> {
        if self
            .calls
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY)
            && self.limiter.len() > MAX_TRACKED
        {
            // Keys whose bucket is full again carry no information.
            self.limiter.retain_recent();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            use governor::clock::Clock as _;
            Wait(whole_seconds(not_until.wait_time_from(self.clock.now())))
        })
    }
}

fn whole_seconds(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// Every limiter of one instance, built from `[limits]`.
pub struct Limiters {
    signin: Option<Keyed<IpAddr>>,
    agent_user: Option<Keyed<(String, String)>>,
    agent: Option<Keyed<String>>,
    failures: Option<Keyed<IpAddr>>,
    /// Addresses whose failed authentications ran out, with when they may try again.
    blocked: RwLock<HashMap<IpAddr, Instant>>,
    /// Ids of agents that have authenticated on this instance.
    known_agents: RwLock<std::collections::HashSet<String>>,
    clock: LimitClock,
    trusted_proxies: Vec<IpNet>,
    forwarded_header: ForwardedHeader,
}

/// The key an address is limited by: itself, or for IPv6 its /64.
fn subscriber(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
    }
}

impl Limiters {
    pub fn new(limits: &Limits, clock: Arc<dyn Clock>) -> Limiters {
        let clock = LimitClock(clock);
        let twice = |n: u32| n.saturating_mul(2);
        Limiters {
            signin: Keyed::new(limits.signin_per_second, limits.signin_burst, &clock),
            agent_user: Keyed::new(
                limits.agent_user_per_second,
                twice(limits.agent_user_per_second),
                &clock,
            ),
            agent: Keyed::new(
                limits.agent_per_second,
                twice(limits.agent_per_second),
                &clock,
            ),
            failures: Keyed::new(limits.signin_per_second, limits.signin_burst, &clock),
            blocked: RwLock::new(HashMap::new()),
            known_agents: RwLock::new(std::collections::HashSet::new()),
            clock,
            trusted_proxies: limits.trusted_proxies.clone(),
            forwarded_header: limits.forwarded_header,
        }
    }

    /// One sign-in route request from `client`.
    pub fn signin(&self, client: IpAddr) -> Result<(), Wait> {
        self.signin
            .as_ref()
            .map_or(Ok(()), |l| l.take(&subscriber(client)))
    }

    /// One agent request for `user`: the per-(agent, user) limit, then the agent's ceiling.
    pub fn agent(&self, agent: &str, user: &str) -> Result<(), Wait> {
        if let Some(l) = &self.agent_user {
            l.take(&(agent.to_owned(), user.to_owned()))?;
        }
        self.agent_ceiling(agent)
    }

    /// One agent request counted against the agent's ceiling only (no user is known).
    pub fn agent_ceiling(&self, agent: &str) -> Result<(), Wait> {
        self.agent
            .as_ref()
            .map_or(Ok(()), |l| l.take(&agent.to_owned()))
    }

    /// Before authenticating a request from `client` that names agent id `claimed` (from
    /// the bearer's prefix, not yet checked): refused while that address's failed
    /// authentications are over budget, without any further cost, unless `claimed` is an
    /// agent that has authenticated here before.
    pub fn before_authentication(&self, client: IpAddr, claimed: Option<&str>) -> Result<(), Wait> {
        use governor::clock::Clock as _;
        let client = subscriber(client);
        // Every agent request passes here: a read lock, and no write unless a block ended.
        let Some(until) = self
            .blocked
            .read()
            .ok()
            .and_then(|b| b.get(&client).copied())
        else {
            return Ok(());
        };
        let now = self.clock.now();
        if now >= until {
            if let Ok(mut blocked) = self.blocked.write() {
                blocked.remove(&client);
            }
            return Ok(());
        }
        let known = claimed.is_some_and(|id| {
            self.known_agents
                .read()
                .is_ok_and(|known| known.contains(id))
        });
        if known {
            // The address stays blocked for everyone else.
            return Ok(());
        }
        Err(Wait(whole_seconds(Duration::from_nanos(
            until.duration_since(now).as_u64(),
        ))))
    }

    /// Agent `id` has authenticated: it is let through to authentication from an address
    /// that is refused for others' failures (see [`Limiters::before_authentication`]).
    pub fn agent_authenticated(&self, id: &str) {
        // Called on every authenticated request: written once per agent.
        if self
            .known_agents
            .read()
            .is_ok_and(|known| known.contains(id) || known.len() >= MAX_KNOWN_AGENTS)
        {
            return;
        }
        if let Ok(mut known) = self.known_agents.write() {
            known.insert(id.to_owned());
        }
    }

    /// A request from `client` failed authentication (no or an unknown agent secret).
    /// Once the address's budget is spent it is refused before authentication until the
    /// budget refills.
    pub fn authentication_failed(&self, client: IpAddr) {
        use governor::clock::Clock as _;
        let Some(l) = &self.failures else { return };
        let client = subscriber(client);
        if let Err(Wait(seconds)) = l.take(&client) {
            let until = self.clock.now() + Nanos::from(Duration::from_secs(seconds));
            if let Ok(mut blocked) = self.blocked.write() {
                if blocked.len() >= MAX_TRACKED {
                    let now = self.clock.now();
                    blocked.retain(|_, u| *u > now);
                }
                blocked.insert(client, until);
            }
        }
    }

    /// The client address of a request from TCP peer `peer`, given its `X-Forwarded-For`
    /// and `Forwarded` header values (see the module docs).
    pub fn client_address<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a str>,
        forwarded: impl Iterator<Item = &'a str>,
    ) -> IpAddr {
        let trusted = &self.trusted_proxies;
        match self.forwarded_header {
            ForwardedHeader::XForwardedFor => {
                client_address(peer, forwarded_for, std::iter::empty(), trusted)
            }
            ForwardedHeader::Forwarded => {
                client_address(peer, std::iter::empty(), forwarded, trusted)
            }
        }
    }
}

/// See [`Limiters::client_address`].
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
    forwarded: impl Iterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Several header lines form one list, in order (RFC 9110 §5.3).
    let xff: Vec<Option<IpAddr>> = forwarded_for
        .flat_map(|v| v.split(','))
        .map(|hop| parse_hop(hop.trim()))
        .collect();
    let hops = if xff.is_empty() {
        forwarded
            .flat_map(|v| v.split(','))
            .map(forwarded_for_param)
            .collect()
    } else {
        xff
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            // Whatever a trusted hop says is believed; the first untrusted one is the client.
            Some(ip) if is_trusted(&ip) => client = ip,
            Some(ip) => return ip,
            // An entry that is not an address ("unknown", an obfuscated name, garbage): the
            // last trusted hop is as far as the chain can be followed.
            None => return client,
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, or an address with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// The `for=` parameter of one `Forwarded` element (RFC 7239 §4, §6).
fn forwarded_for_param(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = value.trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        let (ip, _port) = rest.split_once(']')?;
        return ip
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    parse_hop(value)
}

#[cfg(test)]
mod tests;
