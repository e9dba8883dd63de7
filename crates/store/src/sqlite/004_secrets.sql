-- Secrets: a JSON document each (names, labels, the sealed data key and sealed versions, never
-- a value in the clear), owned by berth-secrets; key material checks; the audit trail.
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE secret_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE secret_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    secret TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    version TEXT
);
CREATE INDEX secret_audit_by_secret ON secret_audit (secret, id);
