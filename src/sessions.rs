//! Server-side browser sessions (SPEC §6), kept by tower-sessions in [`SessionRows`].
//!
//! The cookie carries a 128-bit random id (tower-sessions' form); the database keeps only
//! its SHA-256 digest, so a database reader cannot ride a session. Idle and absolute
//! timeouts are enforced by the store on every load, on the service's clock, not by the
//! cookie's lifetime. Signing in always moves the browser to a new id (`cycle_id`) and ends
//! the one it came with, so a planted session id is worthless (no fixation). The CSRF token
//! is an HMAC of a fixed label keyed by the session id: only a page that was given it, or
//! someone who can read the cookie, can produce it.
//!
//! What tower-sessions does not do is here: a user's session list, ending one or all of
//! them inside the caller's transaction (so the audit event commits with it), and purging.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tower_sessions::session::Id;

use crate::clock::Clock;
use crate::crypto::{constant_time_eq, hmac_sha256};
use crate::secret::SessionToken;
use crate::store::sessions as rows;
pub use crate::store::sessions::{SessionRows, Timeouts, USER_KEY};
use crate::store::{Conn, Db};

/// One entry of a user's session list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub handle: String,
    pub current: bool,
    pub created_at: i64,
    pub last_seen_at: i64,
}

/// The session service.
pub struct Sessions {
    db: Db,
    clock: Arc<dyn Clock>,
    store: SessionRows,
}

fn digest(token: &SessionToken) -> [u8; 32] {
    rows::digest(token.reveal())
}

/// Why a session could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("session store: {0}")]
    Store(#[from] tower_sessions::session::Error),
}

impl SessionError {
    /// True when the store failed because the database is out of reach.
    pub fn database_unavailable(&self) -> bool {
        match self {
            SessionError::Database(e) => crate::store::is_unavailable(e),
            SessionError::Store(e) => rows::is_unavailable(e),
        }
    }
}

impl Sessions {
    pub fn new(db: Db, clock: Arc<dyn Clock>, timeouts: Timeouts) -> Sessions {
        let store = SessionRows::new(db.clone(), Arc::clone(&clock), timeouts);
        Sessions { db, clock, store }
    }

    /// The store for tower-sessions' `SessionManagerLayer`.
    pub fn store(&self) -> SessionRows {
        self.store.clone()
    }

    /// The secret a session id is, as the cookie carries it.
    pub fn token(id: Id) -> SessionToken {
        SessionToken::new(id.to_string())
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
        let idle = self.store.timeouts().idle;
        let mine = digest(token);
        Ok(rows::for_user(self.db.pool(), user_id, now)
            .await?
            .into_iter()
            .filter(|(_, r)| now - r.last_seen_at < idle)
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
        rows::purge_expired(
            self.db.pool(),
            self.clock.unix(),
            self.store.timeouts().idle,
        )
        .await
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
    use tower_sessions::{Session, SessionStore};

    use super::*;
    use crate::both_backends;
    use crate::clock::ManualClock;
    use crate::store::users;

    const IDLE: i64 = 1_800;
    const ABSOLUTE: i64 = 7 * 86_400;

    async fn setup(db: &Db, idle: i64) -> (Sessions, ManualClock) {
        let clock = ManualClock::at_unix(1_800_000_000);
        let c: Arc<dyn Clock> = Arc::new(clock.clone());
        let mut tx = db.begin().await.unwrap();
        users::insert(&mut tx, "alice", 0).await.unwrap();
        users::insert(&mut tx, "bob", 0).await.unwrap();
        tx.commit().await.unwrap();
        let timeouts = Timeouts {
            idle,
            absolute: ABSOLUTE,
        };
        (Sessions::new(db.clone(), c, timeouts), clock)
    }

    /// A browser's session as the layer makes it for a request carrying `id`.
    fn browser(s: &Sessions, id: Option<Id>) -> Session {
        Session::new(id, Arc::new(s.store()), None)
    }

    /// Signs a browser in as the callback does: a new id, the old one ended.
    async fn sign_in(s: &Sessions, came_with: Option<Id>, user: &str) -> Id {
        let session = browser(s, came_with);
        if came_with.is_some() {
            session.cycle_id().await.unwrap();
        }
        session.insert(USER_KEY, user).await.unwrap();
        session.save().await.unwrap();
        session.id().unwrap()
    }

    /// The user a request carrying `id` is signed in as: `None` when the session is gone.
    async fn resume(s: &Sessions, id: Id) -> Option<Option<String>> {
        let session = browser(s, Some(id));
        let user: Option<Option<String>> = session.get(USER_KEY).await.unwrap();
        session.id().map(|_| user.flatten())
    }

    both_backends! {
        async fn sign_in_rotates_and_timeouts_hold(t: TestDb) {
            let (s, clock) = setup(&t.db, IDLE).await;
            // A browser that starts signing in gets a session of nobody.
            let anon = browser(&s, None);
            anon.insert(USER_KEY, Option::<String>::None).await.unwrap();
            anon.save().await.unwrap();
            let anon = anon.id().unwrap();
            assert_eq!(resume(&s, anon).await, Some(None));
            let id = sign_in(&s, Some(anon), "alice").await;
            assert_eq!(resume(&s, anon).await, None, "the pre-sign-in session is gone");
            assert_ne!(anon, id);
            assert_eq!(resume(&s, id).await, Some(Some("alice".into())));
            // Activity keeps it alive past the idle timeout...
            for _ in 0..3 {
                clock.advance(IDLE - 100);
                assert!(resume(&s, id).await.is_some());
            }
            // ...but not past the idle timeout without activity...
            clock.advance(IDLE);
            assert_eq!(resume(&s, id).await, None);
            // ...nor past the absolute timeout with it.
            let id = sign_in(&s, None, "alice").await;
            let mut elapsed = 0;
            while elapsed < ABSOLUTE {
                clock.advance(IDLE / 2);
                elapsed += IDLE / 2;
                let alive = resume(&s, id).await.is_some();
                assert_eq!(alive, elapsed < ABSOLUTE, "at {elapsed}");
            }
        }

        async fn a_session_in_use_outlives_a_short_idle_timeout(t: TestDb) {
            let (s, clock) = setup(&t.db, 3).await;
            let id = sign_in(&s, None, "alice").await;
            // Used every second for a minute: every use counts, none ends it.
            for second in 0..60 {
                clock.advance(1);
                assert!(resume(&s, id).await.is_some(), "ended at {second}s");
            }
            clock.advance(3);
            assert!(resume(&s, id).await.is_none(), "idle 3 s ends it");
        }

        async fn list_end_and_sign_out_everywhere(t: TestDb) {
            let (s, _) = setup(&t.db, IDLE).await;
            let a1 = sign_in(&s, None, "alice").await;
            let a2 = sign_in(&s, None, "alice").await;
            let b1 = sign_in(&s, None, "bob").await;
            let list = s.list("alice", &Sessions::token(a1)).await.unwrap();
            assert_eq!(list.len(), 2);
            assert_eq!(list.iter().filter(|i| i.current).count(), 1);
            let mut tx = t.db.begin().await.unwrap();
            assert!(s.end_in(&mut tx, &Sessions::token(a2)).await.unwrap());
            tx.commit().await.unwrap();
            assert!(resume(&s, a2).await.is_none());
            assert_eq!(s.list("alice", &Sessions::token(a1)).await.unwrap().len(), 1);
            // A request that was under way when its session ended does not bring it back.
            let late = browser(&s, Some(a1));
            assert!(late.get::<Option<String>>(USER_KEY).await.unwrap().is_some());
            let mut tx = t.db.begin().await.unwrap();
            assert_eq!(s.end_all(&mut tx, "alice").await.unwrap(), 1);
            tx.commit().await.unwrap();
            late.insert(USER_KEY, "alice-again").await.unwrap();
            late.save().await.unwrap();
            assert!(resume(&s, a1).await.is_none());
            assert!(resume(&s, b1).await.is_some(), "other users keep theirs");
            // The id is never stored: only its digest.
            let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM session")
                .fetch_all(t.db.pool()).await.unwrap();
            let b1 = b1.to_string();
            assert!(stored.iter().all(|h| h.len() == 32 && h.as_slice() != b1.as_bytes()));
            // And the store answers nothing for an id it never made.
            assert!(s.store().load(&Id(7)).await.unwrap().is_none());
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
        let a = SessionToken::new("a".repeat(22));
        let b = SessionToken::new("b".repeat(22));
        let ta = Sessions::csrf_token(&a);
        assert!(Sessions::csrf_ok(&a, &ta));
        assert!(!Sessions::csrf_ok(&b, &ta));
        assert!(!Sessions::csrf_ok(&a, ""));
        assert!(!Sessions::csrf_ok(&a, &ta[1..]));
    }
}
