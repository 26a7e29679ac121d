//! Configuration parsing: defaults, the SPEC example, errors, limits, admins, guards.

use super::*;

#[test]
fn durations() {
    assert_eq!(parse_duration("90d"), Some(90 * 86_400));
    assert_eq!(parse_duration("30m"), Some(1_800));
    assert_eq!(parse_duration("3s"), Some(3));
    assert_eq!(parse_duration("1h30m"), Some(5_400));
    assert_eq!(parse_duration("42"), Some(42));
    for bad in ["", "d", "3x", "-1", "5d3", "99999999999999999999d"] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
}

#[test]
fn defaults_and_spec_example() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.database_url, "sqlite://data/strongbox.db");
    assert!(!c.https);
    assert_eq!(c.vault.rotation_period, 90 * 86_400);
    let c = Config::from_toml(
        r#"
        public_url = "https://vault.example"
        listen = "0.0.0.0:8443"
        admins = ["google:email:alice@example.com", "github:sub:583231"]
        [vault]
        cipher = "chacha20-poly1305"
        rotation_period = "30d"
        [session]
        idle_timeout = "15m"
        [providers.google]
        client_id = "id"
        client_secret_env = "GOOGLE_CLIENT_SECRET"
        login = true
        [tools."spotify.me"]
        provider = "spotify"
        method = "GET"
        url = "https://api.spotify.com/v1/me"
        scopes = ["user-read-private"]
        "#,
    )
    .unwrap();
    assert!(c.https);
    assert_eq!(c.vault.cipher, Cipher::ChaCha20Poly1305);
    assert_eq!(c.session_idle_timeout, 900);
    assert!(c.providers["google"].login);
    c.production_guards().unwrap();
}

#[test]
fn malformed_config_is_a_clear_error() {
    for (text, needle) in [
        ("public_url = \"ftp://x\"", "public_url"),
        ("listen = \"nope\"", "listen"),
        ("[vault]\ncipher = \"des\"", "vault.cipher"),
        (
            "[vault]\nrotation_period = \"soon\"",
            "vault.rotation_period",
        ),
        ("unknown_key = 1", "unknown_key"),
        ("public_url = [", "invalid configuration"),
    ] {
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?} gave {err}");
    }
}

#[test]
fn inline_secret_refused_in_production_and_never_printed() {
    let c = Config::from_toml(
        "public_url = \"https://v.example\"\n[providers.acme]\nclient_id = \"x\"\nclient_secret = \"hunter2\"",
    )
    .unwrap();
    let err = c.production_guards().unwrap_err().to_string();
    assert!(err.contains("providers.acme.client_secret"));
    assert!(!err.contains("hunter2"));
    assert!(!format!("{c:?}").contains("hunter2"));
    let c = Config::from_toml(
        "public_url = \"https://v.example\"\n[providers.google]\nclient_id = \"x\"\ntoken_url = \"http://10.0.0.1/token\"",
    )
    .unwrap();
    let err = c.production_guards().unwrap_err().to_string();
    assert!(err.contains("must be https://"), "{err}");
}

#[test]
fn limits_default_parse_and_replace_agent_rate_limit() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.limits, Limits::default());
    assert_eq!(
        (c.limits.signin_per_second, c.limits.signin_burst),
        (10, 100)
    );
    assert_eq!(
        (c.limits.agent_user_per_second, c.limits.agent_per_second),
        (50, 0)
    );
    let c = Config::from_toml(
        "[limits]\nsignin_per_second = 0\nagent_per_second = 500\n\
         trusted_proxies = [\"10.0.0.0/8\", \"192.168.1.7\", \"fd00::/8\"]",
    )
    .unwrap();
    assert_eq!(c.limits.signin_per_second, 0);
    assert_eq!(c.limits.agent_per_second, 500);
    assert_eq!(c.limits.agent_user_per_second, 50);
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let trusted = |a: &str| c.limits.trusted_proxies.iter().any(|n| n.contains(&ip(a)));
    assert!(trusted("10.200.0.1") && trusted("192.168.1.7") && trusted("fd12::1"));
    assert!(!trusted("192.168.1.8") && !trusted("11.0.0.1"));
    let err = Config::from_toml("[limits]\ntrusted_proxies = [\"10.0.0.0/33\"]")
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.trusted_proxies"), "{err}");
    let err = Config::from_toml("agent_rate_limit = 100")
        .unwrap_err()
        .to_string();
    assert!(err.contains("[limits] agent_user_per_second"), "{err}");
    let err = Config::from_toml("[limits]\nper_second = 1")
        .unwrap_err()
        .to_string();
    assert!(err.contains("per_second"), "{err}");
}

#[test]
fn admin_entries_name_a_subject_or_a_verified_email() {
    let c = Config::from_toml(
        r#"admins = ["google:email:Alice@Example.com", "github:sub:583231", "acme:alice@example.com"]"#,
    )
    .unwrap();
    let [email, sub, bare] = c.admins.as_slice() else {
        panic!("three rules")
    };
    assert!(email.matches("google", "1234", Some("alice@example.com"), true));
    assert!(!email.matches("google", "1234", Some("alice@example.com"), false));
    assert!(!email.matches("google", "alice@example.com", None, false));
    assert!(!email.matches("github", "1", Some("alice@example.com"), true));
    assert!(sub.matches("github", "583231", None, false));
    assert!(!sub.matches("github", "5832311", None, false));
    assert!(!sub.matches("google", "583231", None, false));
    // The older bare form names a subject only, never an email.
    assert!(bare.matches("acme", "alice@example.com", None, false));
    assert!(!bare.matches("acme", "42", Some("alice@example.com"), true));
    for bad in ["nocolon", ":x", "google:", "google:email:", "google:sub:"] {
        let err = Config::from_toml(&format!("admins = [{bad:?}]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("admins"), "{bad}: {err}");
    }
}

#[test]
fn plain_http_endpoints_only_on_loopback_in_production() {
    for ok in [
        "https://idp.example/token",
        "http://127.0.0.1:9000/token",
        "http://127.8.9.10/x",
        "http://[::1]:8080/x",
        "http://localhost:3000/x",
        "http://LOCALHOST/x",
    ] {
        assert!(secure_endpoint(ok), "{ok}");
    }
    for bad in [
        "http://10.0.0.1/token",
        "http://localhost.evil.example/x",
        "http://127.0.0.1.evil.example/x",
        "http://[::2]/x",
        "ftp://127.0.0.1/x",
        "not a url",
    ] {
        assert!(!secure_endpoint(bad), "{bad}");
    }
    let c = Config::from_toml(
        "public_url = \"https://v.example\"\n[providers.acme]\nkind = \"oauth2\"\n\
         client_id = \"x\"\nclient_secret_env = \"ACME\"\n\
         authorize_url = \"http://127.0.0.1:9/a\"\ntoken_url = \"http://localhost:9/t\"\n\
         [tools.\"acme.me\"]\nprovider = \"acme\"\nmethod = \"GET\"\nurl = \"http://127.0.0.1:9/me\"",
    )
    .unwrap();
    c.production_guards().unwrap();
    let c = Config::from_toml(
        "public_url = \"https://v.example\"\n\
         [tools.\"x.me\"]\nprovider = \"spotify\"\nmethod = \"GET\"\nurl = \"http://api.example/me\"",
    )
    .unwrap();
    let err = c.production_guards().unwrap_err().to_string();
    assert!(err.contains("tools.\"x.me\".url"), "{err}");
}

#[test]
fn redacts_database_passwords() {
    assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
    assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
}
