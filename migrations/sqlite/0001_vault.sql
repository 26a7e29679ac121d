-- Vault core: users, key-encryption keys, sealed connections, and the audit trail.
-- Times are Unix seconds unless named *_ms. Ids are UUID text.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

-- One row per KEK version. sealed_key is the KEK sealed under the root key; it is set to
-- NULL when the version is retired, which destroys the key material.
CREATE TABLE kek (
    version      BIGINT PRIMARY KEY,
    state        TEXT NOT NULL CHECK (state IN ('primary', 'decrypt-only', 'retired')),
    cipher       TEXT NOT NULL,
    sealed_key   BLOB,
    root_key_id  TEXT NOT NULL,
    wraps        BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    retired_at   BIGINT,
    CHECK ((state = 'retired') = (sealed_key IS NULL))
);
-- At most one primary, so two racing rotations cannot both win.
CREATE UNIQUE INDEX kek_one_primary ON kek (state) WHERE state = 'primary';

-- A user's connection to one provider. envelope holds the sealed token set; kek_version
-- repeats the envelope's KEK version as an indexed column for rewrap and retire.
CREATE TABLE connection (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider      TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'active',
    kek_version   BIGINT NOT NULL REFERENCES kek (version),
    generation    BIGINT NOT NULL,
    envelope      BLOB NOT NULL,
    expires_at    BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    UNIQUE (user_id, provider)
);
CREATE INDEX connection_kek ON connection (kek_version, id);

-- Append-only, hash-chained audit trail. audit_head holds the newest sequence number and
-- hash; appending locks it, which orders events.
CREATE TABLE audit_event (
    seq         BIGINT PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    subject     TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    detail      TEXT NOT NULL,
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL
);
CREATE INDEX audit_event_kind ON audit_event (kind, seq);

CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  BLOB NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
