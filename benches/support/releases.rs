//! Set-up shared by the benches that serve raw releases (`release`, `rewrap`): the app
//! with one provider, `acme`, and a policy that lets the agent `bench` fetch its tokens; a
//! user with a warm, unexpired credential (sealed under the current KEK); the agent and a
//! delegation. Tokens here are made up: nothing is sent to a provider.

use std::sync::Arc;

use strongbox::agents::Grant;
use strongbox::audit::{Actor, Event, Kind};
use strongbox::clock::Clock;
use strongbox::secret::AccessToken;
use strongbox::store::Db;
use strongbox::vault::{Scopes, TokenSet, Vault};
use zeroize::Zeroizing;

const POLICY: &str = r#"permit(principal == Agent::"bench", action == Action::"fetch_credential", resource == Provider::"acme");"#;

/// Every rate limit off.
pub const LIMITS_OFF: &str =
    "[limits]\nsignin_per_second = 0\nagent_user_per_second = 0\nagent_per_second = 0\n";

/// The app, ready to release `user`'s `acme` credential to `bench`.
pub struct Fixture {
    pub state: strongbox::AppState,
    /// `Authorization: Bearer` and `Strongbox-Delegation` values.
    pub secret: Zeroizing<String>,
    pub delegation: Zeroizing<String>,
    /// The policy directory, read at start; kept for the life of the bench.
    _policies: tempfile::TempDir,
}

/// Builds the app (`limits` is a `[limits]` table, or empty for the defaults) and stores
/// `user`'s credential, the agent and its delegation.
pub async fn fixture(
    db: &Db,
    vault: &Arc<Vault>,
    clock: &Arc<dyn Clock>,
    limits: &str,
    user: &str,
) -> Fixture {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("bench.cedar"), POLICY).unwrap();
    let config = strongbox::config::Config::from_toml(&format!(
        "policies_dir = \"{}\"\n{limits}\
         [providers.acme]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"cs\"\n\
         authorize_url = \"http://127.0.0.1:9/a\"\ntoken_url = \"http://127.0.0.1:9/t\"\n",
        policies.path().display(),
    ))
    .unwrap();
    let state =
        strongbox::AppState::build(config, db.clone(), Arc::clone(vault), Arc::clone(clock))
            .unwrap();
    let mut tx = db.begin().await.unwrap();
    strongbox::store::users::insert(&mut tx, user, clock.unix())
        .await
        .unwrap();
    let tokens = TokenSet {
        access_token: AccessToken::new("at-bench-not-a-real-token".into()),
        refresh_token: None,
        id_token: None,
        token_type: "Bearer".into(),
        expires_at: Some(clock.unix() + 86_400),
        scopes: vec!["read".into()],
    };
    let event = Event::new(Kind::CredentialStored, Actor::Cli, format!("user:{user}"));
    vault
        .store(&mut tx, event, user, "acme", &tokens, Scopes::Replace)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (agent, secret) = state
        .agents
        .add("bench", &Default::default(), Actor::Cli)
        .await
        .unwrap();
    let grant = Grant {
        agent: "bench".into(),
        tools: vec![],
        providers: vec!["acme".into()],
        ttl: 3600,
    };
    let mut tx = db.begin().await.unwrap();
    let (dlg, _) = state
        .agents
        .delegate(&mut tx, user, &agent, &grant)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    Fixture {
        state,
        secret: strongbox::agents::secret_text(&secret.unwrap()),
        delegation: strongbox::agents::token_text(&dlg),
        _policies: policies,
    }
}

/// A keep-alive release request for `addr`.
pub fn request(addr: std::net::SocketAddr, f: &Fixture) -> Vec<u8> {
    format!(
        "POST /v1/credentials/acme HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Strongbox-Delegation: {}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
        f.secret.as_str(),
        f.delegation.as_str(),
    )
    .into_bytes()
}
