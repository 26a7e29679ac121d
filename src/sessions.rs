//! Server-side browser sessions (SPEC §6).
//!
//! The cookie carries 32 random bytes (base64url); the database keeps only their SHA-256
//! digest, so a database reader cannot ride a session. Idle and absolute timeouts are
//! enforced here on every lookup, not by the cookie's lifetime. Signing in always starts a
//! new session and ends the one the browser came with, so a planted session id is worthless
//! (no fixation). The CSRF token is an HMAC of a fixed label keyed by the session secret:
//! only a page that was given it, or someone who can read the cookie, can produce it.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::clock::Clock;
use crate::crypto::{self, constant_time_eq, hmac_sha256, random_text, sha256};
use crate::secret::SessionToken;
use crate::store::sessions::{self as rows, SessionRow};
use crate::store::{Conn, Db};

/// How often, at most, a session's `last_seen_at` is written, unless the idle timeout
/// is short (see [`Timeouts::touch_interval`]).
const TOUCH_INTERVAL: i64 = 60;

/// A live session, as looked up from its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Opaque id for listing and ending this session; never the cookie value.
    pub handle: String,
    pub user_id: Option<String>,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

impl From<SessionRow> for Session {
    fn from(r: SessionRow) -> Session {
        Session {
            handle: r.handle,
            user_id: r.user_id,
            created_at: r.created_at,
            last_seen_at: r.last_seen_at,
            expires_at: r.expires_at,
        }
    }
}

/// One entry of a user's session list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub handle: String,
    pub current: bool,
    pub created_at: i64,
    pub last_seen_at: i64,
}

/// Session timeouts in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub idle: i64,
    pub absolute: i64,
}

impl Timeouts {
    /// Seconds between writes of `last_seen_at`: at most a tenth of the idle timeout, so a
    /// session in use is never ended for idleness because its last use went unwritten.
    pub fn touch_interval(&self) -> i64 {
        TOUCH_INTERVAL.min(self.idle / 10).max(0)
    }
}

/// The session service.
pub struct Sessions {
    db: Db,
    clock: Arc<dyn Clock>,
    timeouts: Timeouts,
}

fn digest(token: &SessionToken) -> [u8; 32] {
    sha256(&[token.reveal().as_bytes()])
}

/// Why a session could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Crypto(#[from] crypto::CryptoError),
}

impl Sessions {
    pub fn new(db: Db, clock: Arc<dyn Clock>, timeouts: Timeouts) -> Sessions {
        Sessions {
            db,
            clock,
            timeouts,
        }
    }

    /// Starts a session inside the caller's transaction (so sign-in and its audit event
    /// commit together). Returns the cookie secret and the session.
    pub async fn start(
        &self,
        conn: &mut Conn,
        user_id: Option<&str>,
    ) -> Result<(SessionToken, Session), SessionError> {
        let token = SessionToken::new(random_text(32)?.to_string());
        let now = self.clock.unix();
        let row = SessionRow {
            handle: random_text(12)?.to_string(),
            user_id: user_id.map(str::to_owned),
            created_at: now,
            last_seen_at: now,
            expires_at: now + self.timeouts.absolute,
        };
        rows::insert(conn, &digest(&token), &row).await?;
        Ok((token, row.into()))
    }

    /// Signs a browser in: ends the session it came with, if any, and starts a new one.
    pub async fn sign_in(
        &self,
        conn: &mut Conn,
        previous: Option<&SessionToken>,
        user_id: &str,
    ) -> Result<(SessionToken, Session), SessionError> {
        if let Some(previous) = previous {
            rows::delete_by_token(&mut *conn, &digest(previous)).await?;
        }
        self.start(conn, Some(user_id)).await
    }

    /// The live session behind a cookie, or `None` when it is unknown, ended, idle for
    /// longer than the idle timeout or older than the absolute one. Expired sessions are
    /// deleted on sight.
    pub async fn resume(&self, token: &SessionToken) -> Result<Option<Session>, sqlx::Error> {
        let hash = digest(token);
        let Some(row) = rows::by_token(self.db.pool(), &hash).await? else {
            return Ok(None);
        };
        let now = self.clock.unix();
        if now >= row.expires_at || now - row.last_seen_at >= self.timeouts.idle {
            rows::delete_by_token(self.db.pool(), &hash).await?;
            return Ok(None);
        }
        rows::touch(self.db.pool(), &hash, now, self.timeouts.touch_interval()).await?;
        Ok(Some(row.into()))
    }

    /// Ends the session behind a cookie.
    pub async fn end(&self, token: &SessionToken) -> Result<bool, sqlx::Error> {
        rows::delete_by_token(self.db.pool(), &digest(token)).await
    }

    /// Ends the session behind a cookie inside the caller's transaction.
    pub async fn end_in(&self, conn: &mut Conn, token: &SessionToken) -> Result<bool, sqlx::Error> {
        rows::delete_by_token(conn, &digest(token)).await
    }

    /// Ends every session of a user ("sign out everywhere"); returns how many.
    pub async fn end_all(&self, conn: &mut Conn, user_id: &str) -> Result<u64, sqlx::Error> {
        rows::delete_for_user(conn, user_id).await
    }

    /// A user's live sessions; `current` marks the one behind `token`.
    pub async fn list(
        &self,
        user_id: &str,
        token: &SessionToken,
    ) -> Result<Vec<SessionInfo>, sqlx::Error> {
        let now = self.clock.unix();
        let mine = digest(token);
        Ok(rows::for_user(self.db.pool(), user_id, now)
            .await?
            .into_iter()
            .filter(|(_, r)| now - r.last_seen_at < self.timeouts.idle)
            .map(|(hash, r)| SessionInfo {
                current: constant_time_eq(&hash, &mine),
                handle: r.handle,
                created_at: r.created_at,
                last_seen_at: r.last_seen_at,
            })
            .collect())
    }

    /// Deletes sessions past either timeout; run periodically.
    pub async fn purge(&self) -> Result<u64, sqlx::Error> {
        rows::purge_expired(self.db.pool(), self.clock.unix(), self.timeouts.idle).await
    }

    /// The CSRF token of a session: given to its pages and `/api/me`, required back on
    /// every state-changing request.
    pub fn csrf_token(token: &SessionToken) -> String {
        URL_SAFE_NO_PAD.encode(hmac_sha256(token.reveal().as_bytes(), b"strongbox csrf v1"))
    }

    /// Constant-time check of a presented CSRF token.
    pub fn csrf_ok(token: &SessionToken, presented: &str) -> bool {
        constant_time_eq(Self::csrf_token(token).as_bytes(), presented.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::both_backends;
    use crate::clock::ManualClock;
    use crate::store::users;

    const IDLE: i64 = 1_800;
    const ABSOLUTE: i64 = 7 * 86_400;

    async fn setup(db: &Db) -> (Sessions, ManualClock) {
        let clock = ManualClock::at_unix(1_800_000_000);
        let c: Arc<dyn Clock> = Arc::new(clock.clone());
        let mut tx = db.begin().await.unwrap();
        users::insert(&mut tx, "alice", 0).await.unwrap();
        users::insert(&mut tx, "bob", 0).await.unwrap();
        tx.commit().await.unwrap();
        (
            Sessions::new(
                db.clone(),
                c,
                Timeouts {
                    idle: IDLE,
                    absolute: ABSOLUTE,
                },
            ),
            clock,
        )
    }

    async fn sign_in(
        s: &Sessions,
        db: &Db,
        prev: Option<&SessionToken>,
        user: &str,
    ) -> (SessionToken, Session) {
        let mut tx = db.begin().await.unwrap();
        let out = s.sign_in(&mut tx, prev, user).await.unwrap();
        tx.commit().await.unwrap();
        out
    }

    both_backends! {
        async fn sign_in_rotates_and_timeouts_hold(t: TestDb) {
            let (s, clock) = setup(&t.db).await;
            let mut tx = t.db.begin().await.unwrap();
            let (anon, _) = s.start(&mut tx, None).await.unwrap();
            tx.commit().await.unwrap();
            assert_eq!(s.resume(&anon).await.unwrap().unwrap().user_id, None);
            let (tok, session) = sign_in(&s, &t.db, Some(&anon), "alice").await;
            assert!(s.resume(&anon).await.unwrap().is_none(), "the pre-sign-in session is gone");
            assert_ne!(anon.reveal(), tok.reveal());
            assert_eq!(session.user_id.as_deref(), Some("alice"));
            assert!(!session.handle.is_empty() && !tok.reveal().contains(&session.handle));
            // Activity keeps it alive past the idle timeout...
            for _ in 0..3 {
                clock.advance(IDLE - 100);
                assert!(s.resume(&tok).await.unwrap().is_some());
            }
            // ...but not past the idle timeout without activity...
            clock.advance(IDLE);
            assert!(s.resume(&tok).await.unwrap().is_none());
            // ...nor past the absolute timeout with it.
            let (tok, _) = sign_in(&s, &t.db, None, "alice").await;
            let mut elapsed = 0;
            while elapsed < ABSOLUTE {
                clock.advance(IDLE / 2);
                elapsed += IDLE / 2;
                let alive = s.resume(&tok).await.unwrap().is_some();
                assert_eq!(alive, elapsed < ABSOLUTE, "at {elapsed}");
            }
        }

        async fn a_session_in_use_outlives_a_short_idle_timeout(t: TestDb) {
            let clock = ManualClock::at_unix(1_800_000_000);
            let mut tx = t.db.begin().await.unwrap();
            users::insert(&mut tx, "alice", 0).await.unwrap();
            tx.commit().await.unwrap();
            let s = Sessions::new(
                t.db.clone(),
                Arc::new(clock.clone()),
                Timeouts { idle: 3, absolute: ABSOLUTE },
            );
            let (tok, _) = sign_in(&s, &t.db, None, "alice").await;
            // Used every second for a minute: every use counts, none ends it.
            for second in 0..60 {
                clock.advance(1);
                assert!(s.resume(&tok).await.unwrap().is_some(), "ended at {second}s");
            }
            clock.advance(3);
            assert!(s.resume(&tok).await.unwrap().is_none(), "idle 3 s ends it");
        }

        async fn list_end_and_sign_out_everywhere(t: TestDb) {
            let (s, _) = setup(&t.db).await;
            let (a1, _) = sign_in(&s, &t.db, None, "alice").await;
            let (a2, _) = sign_in(&s, &t.db, None, "alice").await;
            let (b1, _) = sign_in(&s, &t.db, None, "bob").await;
            let list = s.list("alice", &a1).await.unwrap();
            assert_eq!(list.len(), 2);
            assert_eq!(list.iter().filter(|i| i.current).count(), 1);
            assert!(s.end(&a2).await.unwrap());
            assert!(s.resume(&a2).await.unwrap().is_none());
            assert_eq!(s.list("alice", &a1).await.unwrap().len(), 1);
            let mut tx = t.db.begin().await.unwrap();
            assert_eq!(s.end_all(&mut tx, "alice").await.unwrap(), 1);
            tx.commit().await.unwrap();
            assert!(s.resume(&a1).await.unwrap().is_none());
            assert!(s.resume(&b1).await.unwrap().is_some(), "other users keep theirs");
            // The cookie secret is never stored: only its digest.
            let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM session")
                .fetch_all(t.db.pool()).await.unwrap();
            assert!(stored.iter().all(|h| h.len() == 32 && h.as_slice() != b1.reveal().as_bytes()));
        }
    }

    #[test]
    fn last_seen_is_written_well_within_the_idle_timeout() {
        let t = |idle| {
            Timeouts {
                idle,
                absolute: ABSOLUTE,
            }
            .touch_interval()
        };
        assert_eq!(t(1_800), 60);
        assert_eq!(t(300), 30);
        assert_eq!(t(3), 0);
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        let a = SessionToken::new("a".repeat(43));
        let b = SessionToken::new("b".repeat(43));
        let ta = Sessions::csrf_token(&a);
        assert!(Sessions::csrf_ok(&a, &ta));
        assert!(!Sessions::csrf_ok(&b, &ta));
        assert!(!Sessions::csrf_ok(&a, ""));
        assert!(!Sessions::csrf_ok(&a, &ta[1..]));
    }
}
