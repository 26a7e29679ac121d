-- Strongbox as an OAuth 2.1 authorization server for agents (SPEC §11).

-- Every OAuth client is an agent row: one registered with `strongbox agents add`
-- (kind 'registered': a secret, or a JWKS for private_key_jwt), one registered by
-- RFC 7591 (kind 'dynamic', a public client), or one named by its client ID metadata
-- document's URL (kind 'metadata', a public client; the document is cached here).
-- An empty secret_hash means no secret authenticates the client.
ALTER TABLE agent ADD COLUMN kind TEXT NOT NULL DEFAULT 'registered';
ALTER TABLE agent ADD COLUMN redirect_uris TEXT NOT NULL DEFAULT '[]';
ALTER TABLE agent ADD COLUMN jwks TEXT;
ALTER TABLE agent ADD COLUMN display_name TEXT;
ALTER TABLE agent ADD COLUMN fetched_at BIGINT;

-- What a user approved on the consent page: an agent may run these tools and fetch these
-- providers' credentials for this user until expires_at. Deleting it ends its codes,
-- refresh tokens and access tokens at once (they cascade).
CREATE TABLE agent_grant (
    id            TEXT PRIMARY KEY,
    agent_id      TEXT NOT NULL REFERENCES agent (id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tools         TEXT NOT NULL,
    providers     TEXT NOT NULL,
    resource      TEXT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX agent_grant_by_user ON agent_grant (user_id);
CREATE INDEX agent_grant_by_expiry ON agent_grant (expires_at);

-- Authorization codes, by digest: one-time (used_at), short-lived, bound to the grant's
-- client, the redirect URI and the PKCE challenge.
CREATE TABLE oauth_code (
    code_hash       BLOB PRIMARY KEY,
    grant_id        TEXT NOT NULL REFERENCES agent_grant (id) ON DELETE CASCADE,
    redirect_uri    TEXT NOT NULL,
    code_challenge  TEXT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT
);

-- Refresh tokens, by digest. A rotated one (rotated_at set) presented again revokes the
-- whole grant (RFC 9700 §4.14).
CREATE TABLE refresh_token (
    token_hash  BLOB PRIMARY KEY,
    grant_id    TEXT NOT NULL REFERENCES agent_grant (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    rotated_at  BIGINT
);
CREATE INDEX refresh_token_by_grant ON refresh_token (grant_id);

-- An access token is a delegation row issued under a grant, with the resource it is for.
ALTER TABLE delegation ADD COLUMN grant_id TEXT REFERENCES agent_grant (id) ON DELETE CASCADE;
ALTER TABLE delegation ADD COLUMN resource TEXT;
CREATE INDEX delegation_by_grant ON delegation (grant_id);

-- private_key_jwt assertion ids seen, until the assertion expires (one-time jti).
CREATE TABLE client_assertion (
    jti_hash    BLOB PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);
