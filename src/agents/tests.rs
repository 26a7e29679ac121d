//! Agent request resolution against both backends, and agent names.

use std::sync::Arc;

use super::*;
use crate::both_backends;
use crate::secret::AccessToken;
use crate::vault::{Scopes, TokenSet, VaultSettings};

/// What a test expects of one resolved request.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Unauthenticated,
    Refused(String, DelegationRefused),
    /// Agent, user, and the connection's (user, provider) if one came with it.
    Accepted(String, String, Option<(String, String)>),
}

fn seen(r: Resolution) -> Seen {
    match r {
        Resolution::Unauthenticated => Seen::Unauthenticated,
        Resolution::Refused(a, why) => Seen::Refused(a.name, why),
        Resolution::Accepted {
            agent,
            delegation,
            connection,
            ..
        } => Seen::Accepted(
            agent.name,
            delegation.user_id,
            connection.map(|c| (c.user_id, c.provider)),
        ),
    }
}

both_backends! {
    async fn requests_read_together_each_get_their_own_rows(t: TestDb) {
        let (vault, clock) = crate::testkit::vault(&t.db, VaultSettings::default());
        vault.init(Actor::Cli).await.unwrap();
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let agents = Arc::new(Agents::new(t.db.clone(), Arc::clone(&clock)));
        let (a, a_secret) = agents.add("a", &Registration::default(), Actor::Cli).await.unwrap();
        let a_secret = a_secret.unwrap();
        let (b, b_secret) = agents.add("b", &Registration::default(), Actor::Cli).await.unwrap();
        let b_secret = b_secret.unwrap();
        // Users u0..u5; each has a connection to p0, the even ones to p1 as well.
        // u0..u3 delegate to a, u4 and u5 to b; u3's delegation has expired.
        let mut tokens = Vec::new();
        for i in 0..6 {
            let user = format!("u{i}");
            let mut tx = t.db.begin().await.unwrap();
            crate::store::users::insert(&mut tx, &user, 0).await.unwrap();
            let providers: &[&str] = if i % 2 == 0 { &["p0", "p1"] } else { &["p0"] };
            for p in providers {
                let set = TokenSet {
                    access_token: AccessToken::new(format!("at-{user}-{p}")),
                    refresh_token: None,
                    id_token: None,
                    token_type: "Bearer".into(),
                    expires_at: None,
                    scopes: vec![],
                };
                let event = Event::new(Kind::CredentialStored, Actor::Cli, format!("user:{user}"));
                vault.store(&mut tx, event, &user, p, &set, Scopes::Replace).await.unwrap();
            }
            let agent = if i < 4 { &a } else { &b };
            let ttl = if i == 3 { -1 } else { 600 };
            let grant = Grant { agent: agent.name.clone(), tools: vec![], providers: vec!["p0".into()], ttl };
            let (token, _) = agents.delegate(&mut tx, &user, agent, &grant).await.unwrap();
            tx.commit().await.unwrap();
            tokens.push(token.reveal().to_owned());
        }
        let a_secret = a_secret.reveal().to_owned();
        let b_secret = b_secret.reveal().to_owned();
        let wrong = format!("{}x", &a_secret[..a_secret.len() - 1]);
        let unknown = format!("sbx_agent_{}_zzz", "0".repeat(32));
        let accepted = |agent: &str, user: &str, conn: Option<&str>| {
            Seen::Accepted(agent.into(), user.into(), conn.map(|p| (user.to_owned(), p.to_owned())))
        };
        let cases: Vec<(String, String, &str, Seen)> = vec![
            (a_secret.clone(), tokens[0].clone(), "p0", accepted("a", "u0", Some("p0"))),
            (a_secret.clone(), tokens[0].clone(), "p1", accepted("a", "u0", Some("p1"))),
            (a_secret.clone(), tokens[1].clone(), "p1", accepted("a", "u1", None)),
            (a_secret.clone(), tokens[2].clone(), "p0", accepted("a", "u2", Some("p0"))),
            (a_secret.clone(), tokens[3].clone(), "p0", Seen::Refused("a".into(), DelegationRefused::Expired)),
            (a_secret.clone(), tokens[4].clone(), "p0", Seen::Refused("a".into(), DelegationRefused::OtherAgent)),
            (b_secret.clone(), tokens[4].clone(), "p1", accepted("b", "u4", Some("p1"))),
            (b_secret.clone(), tokens[5].clone(), "p0", accepted("b", "u5", Some("p0"))),
            (b_secret.clone(), "sbx_dlg_nope".into(), "p0", Seen::Refused("b".into(), DelegationRefused::Invalid)),
            (b_secret.clone(), String::new(), "p0", Seen::Refused("b".into(), DelegationRefused::Invalid)),
            (wrong, tokens[0].clone(), "p0", Seen::Unauthenticated),
            (unknown, tokens[0].clone(), "p0", Seen::Unauthenticated),
            ("not-a-secret".into(), tokens[0].clone(), "p0", Seen::Unauthenticated),
            // A provider the database cannot hold does not fail the requests read with it.
            (a_secret.clone(), tokens[0].clone(), "p0\0x", accepted("a", "u0", None)),
        ];
        // Every case eight times at once, so reads carry many different requests (and
        // repeats of one).
        let mut tasks = Vec::new();
        for (i, (secret, token, provider, _)) in cases.iter().enumerate().cycle().take(cases.len() * 8) {
            let (agents, secret, token, provider) =
                (Arc::clone(&agents), secret.clone(), token.clone(), provider.to_string());
            tasks.push((i, tokio::spawn(async move {
                seen(agents.resolve(&secret, &token, &provider, false).await.unwrap())
            })));
        }
        for (i, task) in tasks {
            assert_eq!(task.await.unwrap(), cases[i].3, "case {i}");
        }
        // A revocation committed before a request is seen by it.
        let mut tx = t.db.begin().await.unwrap();
        agents.revoke_all(&mut tx, "u0").await.unwrap();
        tx.commit().await.unwrap();
        let r = agents.resolve(&a_secret, &tokens[0], "p0", false).await.unwrap();
        assert_eq!(seen(r), Seen::Refused("a".into(), DelegationRefused::Invalid));
    }
}

#[test]
fn agent_names() {
    for good in ["chat-backend", "a", "agent_1.prod"] {
        assert!(valid_name(good), "{good}");
    }
    for bad in ["", "a b", "ägent", "x/y", &"a".repeat(65)] {
        assert!(!valid_name(bad), "{bad}");
    }
}
