-- Agents, delegations, and the refresh lease.

-- A registered agent service. Only a SHA-256 digest of its secret is stored; the secret
-- names the agent's id so the digest is found by key and compared in constant time.
CREATE TABLE agent (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    secret_hash  BLOB NOT NULL,
    created_at   BIGINT NOT NULL
);

-- A user's delegation to an agent: opaque bearer token, stored as a digest. tools and
-- providers are JSON arrays of names. Deleting the row revokes it at once.
CREATE TABLE delegation (
    token_hash   BLOB PRIMARY KEY,
    handle       TEXT NOT NULL UNIQUE,
    agent_id     TEXT NOT NULL REFERENCES agent (id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tools        TEXT NOT NULL,
    providers    TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX delegation_by_user ON delegation (user_id);
CREATE INDEX delegation_by_expiry ON delegation (expires_at);

-- Single-flight refresh across instances: a refresher holds the lease until it has
-- stored the new tokens (or given up); others wait and re-read.
ALTER TABLE connection ADD COLUMN refresh_lease_until BIGINT;
