//! The limiters' arithmetic, the client address behind proxies, and blocking.

use super::*;
use crate::clock::ManualClock;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn untrusted_peer_is_the_client_whatever_it_forwards() {
    let trusted = nets(&["10.0.0.0/8"]);
    let got = client_address(
        ip("203.0.113.7"),
        ["1.2.3.4"].into_iter(),
        ["for=5.6.7.8"].into_iter(),
        &trusted,
    );
    assert_eq!(got, ip("203.0.113.7"));
    // No trusted proxies at all: the peer, always.
    let got = client_address(ip("10.0.0.1"), ["1.2.3.4"].into_iter(), [].into_iter(), &[]);
    assert_eq!(got, ip("10.0.0.1"));
}

#[test]
fn trusted_proxy_the_rightmost_untrusted_hop_counts() {
    let trusted = nets(&["10.0.0.0/8", "192.168.0.0/16"]);
    // The client forged "6.6.6.6"; the proxies appended what they saw.
    let got = client_address(
        ip("10.0.0.1"),
        ["6.6.6.6, 198.51.100.9", "192.168.1.1"].into_iter(),
        [].into_iter(),
        &trusted,
    );
    assert_eq!(got, ip("198.51.100.9"));
    // With a port, and IPv6 in brackets.
    let got = client_address(
        ip("10.0.0.1"),
        ["[2001:db8::1]:443"].into_iter(),
        [].into_iter(),
        &trusted,
    );
    assert_eq!(got, ip("2001:db8::1"));
    // Every hop trusted: the left-most.
    let got = client_address(
        ip("10.0.0.1"),
        ["192.168.5.5, 10.1.1.1"].into_iter(),
        [].into_iter(),
        &trusted,
    );
    assert_eq!(got, ip("192.168.5.5"));
    // Garbage where an address should be: stop at the last trusted hop.
    let got = client_address(
        ip("10.0.0.1"),
        ["1.1.1.1, unknown, 10.2.2.2"].into_iter(),
        [].into_iter(),
        &trusted,
    );
    assert_eq!(got, ip("10.2.2.2"));
    // An IPv4-mapped peer is its IPv4 address.
    let got = client_address(
        ip("::ffff:10.0.0.1"),
        ["198.51.100.1"].into_iter(),
        [].into_iter(),
        &trusted,
    );
    assert_eq!(got, ip("198.51.100.1"));
}

#[test]
fn forwarded_header_when_there_is_no_x_forwarded_for() {
    let trusted = nets(&["10.0.0.0/8"]);
    let got = client_address(
        ip("10.0.0.1"),
        [].into_iter(),
        [r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For=10.0.0.2"#].into_iter(),
        &trusted,
    );
    assert_eq!(got, ip("2001:db8:cafe::17"));
    let got = client_address(
        ip("10.0.0.1"),
        [].into_iter(),
        ["for=_hidden, for=10.0.0.3"].into_iter(),
        &trusted,
    );
    assert_eq!(got, ip("10.0.0.3"));
}

fn limiters(limits: Limits) -> (Limiters, ManualClock) {
    let clock = ManualClock::at_unix(1_700_000_000);
    (Limiters::new(&limits, Arc::new(clock.clone())), clock)
}

#[test]
fn signin_burst_then_rate_per_address_and_zero_is_off() {
    let (l, clock) = limiters(Limits {
        signin_per_second: 2,
        signin_burst: 5,
        ..Limits::default()
    });
    let a = ip("192.0.2.1");
    for _ in 0..5 {
        l.signin(a).unwrap();
    }
    assert_eq!(l.signin(a), Err(Wait(1)));
    l.signin(ip("192.0.2.2"))
        .expect("another address has its own bucket");
    clock.advance(1);
    l.signin(a).unwrap();
    l.signin(a).unwrap();
    assert!(l.signin(a).is_err());

    let (off, _) = limiters(Limits {
        signin_per_second: 0,
        agent_user_per_second: 0,
        ..Limits::default()
    });
    for _ in 0..10_000 {
        off.signin(a).unwrap();
        off.agent("bot", "u1").unwrap();
    }
}

#[test]
fn agents_per_user_with_an_optional_ceiling() {
    let (l, _) = limiters(Limits {
        agent_user_per_second: 2,
        agent_per_second: 0,
        ..Limits::default()
    });
    for _ in 0..4 {
        l.agent("bot", "u1").unwrap();
    }
    assert!(l.agent("bot", "u1").is_err(), "bursts of twice the rate");
    l.agent("bot", "u2")
        .expect("another user has its own bucket");
    l.agent("other", "u1")
        .expect("another agent has its own bucket");

    let (l, _) = limiters(Limits {
        agent_user_per_second: 100,
        agent_per_second: 3,
        ..Limits::default()
    });
    for u in 0..6 {
        l.agent("bot", &format!("u{u}")).unwrap();
    }
    assert!(
        l.agent("bot", "u7").is_err(),
        "the agent's ceiling spans users"
    );
}

#[test]
fn failed_authentications_block_the_address_before_the_next_attempt() {
    let (l, clock) = limiters(Limits {
        signin_per_second: 1,
        signin_burst: 3,
        ..Limits::default()
    });
    let a = ip("198.51.100.4");
    for _ in 0..3 {
        l.before_authentication(a, None).unwrap();
        l.authentication_failed(a);
    }
    l.before_authentication(a, None).unwrap();
    l.authentication_failed(a); // over budget: blocked from now on
    assert_eq!(l.before_authentication(a, None), Err(Wait(1)));
    l.before_authentication(ip("198.51.100.5"), None)
        .expect("other addresses are not blocked");
    clock.advance(1);
    l.before_authentication(a, None)
        .expect("the budget refilled");
}

#[test]
fn an_agent_that_authenticated_is_not_locked_out_by_its_neighbours() {
    let (l, _) = limiters(Limits {
        signin_per_second: 1,
        signin_burst: 1,
        ..Limits::default()
    });
    let shared = ip("203.0.113.1");
    l.agent_authenticated("0123abcd");
    l.authentication_failed(shared);
    l.authentication_failed(shared);
    assert!(l.before_authentication(shared, None).is_err());
    assert!(l.before_authentication(shared, Some("ffff0000")).is_err());
    l.before_authentication(shared, Some("0123abcd"))
        .expect("a known agent goes on to authentication");
    assert!(
        l.before_authentication(shared, None).is_err(),
        "the known agent's request does not lift the block for the others"
    );
}

#[test]
fn ipv6_clients_are_limited_per_64() {
    let (l, _) = limiters(Limits {
        signin_per_second: 1,
        signin_burst: 2,
        ..Limits::default()
    });
    l.signin(ip("2001:db8:1:2::1")).unwrap();
    l.signin(ip("2001:db8:1:2:ffff::9")).unwrap();
    assert!(l.signin(ip("2001:db8:1:2:abcd::5")).is_err(), "same /64");
    l.signin(ip("2001:db8:1:3::1")).expect("another /64");
}

#[test]
fn only_the_configured_forwarding_header_is_read() {
    let trusted = nets(&["10.0.0.0/8"]);
    let (xff, _) = limiters(Limits {
        trusted_proxies: trusted.clone(),
        ..Limits::default()
    });
    let (fwd, _) = limiters(Limits {
        trusted_proxies: trusted,
        forwarded_header: ForwardedHeader::Forwarded,
        ..Limits::default()
    });
    let peer = ip("10.0.0.1");
    let both = |l: &Limiters| {
        l.client_address(
            peer,
            ["198.51.100.1"].into_iter(),
            ["for=198.51.100.2"].into_iter(),
        )
    };
    assert_eq!(both(&xff), ip("198.51.100.1"));
    assert_eq!(both(&fwd), ip("198.51.100.2"));
    // A proxy that writes Forwarded passes a client's X-Forwarded-For through: ignored.
    let only_xff = fwd.client_address(peer, ["6.6.6.6"].into_iter(), std::iter::empty());
    assert_eq!(only_xff, peer);
}
