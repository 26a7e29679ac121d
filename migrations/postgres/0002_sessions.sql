-- Sign-in identities and server-side browser sessions.

-- A user's identity at a provider, found by (provider, subject). email_verified is 0/1.
CREATE TABLE identity (
    provider        TEXT NOT NULL,
    subject         TEXT NOT NULL,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email           TEXT,
    email_verified  BIGINT NOT NULL DEFAULT 0,
    name            TEXT,
    created_at      BIGINT NOT NULL,
    last_login_at   BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX identity_user ON identity (user_id);

-- A browser session. Only a SHA-256 digest of the cookie's secret is stored, so a
-- database reader cannot ride a session. handle is the opaque id shown to the user.
-- user_id is NULL until sign-in. expires_at is the absolute timeout.
CREATE TABLE session (
    token_hash    BYTEA PRIMARY KEY,
    handle        TEXT NOT NULL UNIQUE,
    user_id       TEXT REFERENCES users (id) ON DELETE CASCADE,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX session_by_user ON session (user_id);

-- An authorization request in flight: one-time, bound to the browser session that started
-- it, expiring after ten minutes. Only digests of the state and session are stored; the
-- PKCE verifier and nonce are derived from the state with a key held outside the database.
CREATE TABLE oauth_flow (
    state_hash    BYTEA PRIMARY KEY,
    session_hash  BYTEA NOT NULL,
    provider      TEXT NOT NULL,
    purpose       TEXT NOT NULL CHECK (purpose IN ('login', 'connect')),
    user_id       TEXT REFERENCES users (id) ON DELETE CASCADE,
    scopes        TEXT NOT NULL,
    return_to     TEXT NOT NULL,
    expires_at    BIGINT NOT NULL
);
