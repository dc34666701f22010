-- Revocable sessions. A token names its user, a random session id and the
-- user's session generation when it was issued. Changing the password bumps
-- the generation, which ends every older token at once; logging out records
-- the session id here until the token would have expired anyway.

ALTER TABLE users ADD COLUMN session_generation integer NOT NULL DEFAULT 0;

CREATE TABLE revoked_sessions (
    session_id bytea PRIMARY KEY CHECK (length(session_id) = 16),
    user_id    bigint NOT NULL REFERENCES users (id),
    expires_at timestamptz NOT NULL
);

CREATE INDEX revoked_sessions_expiry ON revoked_sessions (expires_at);
