-- Console sessions: a browser's cookie names one (by its secret's sha256), which acts with the
-- token it was opened with until it expires, is closed, or the token is revoked.
CREATE TABLE console_sessions (
    id_sha256 TEXT PRIMARY KEY,
    token_id TEXT NOT NULL,
    -- The anti-forgery value every form of the session carries.
    csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
