CREATE TABLE repositories (
    name        TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    tag_policy  TEXT NOT NULL,
    lifecycle   TEXT NOT NULL DEFAULT '[]'
);

CREATE TABLE blob_links (
    repository  TEXT NOT NULL REFERENCES repositories(name) ON DELETE CASCADE,
    digest      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (repository, digest)
) WITHOUT ROWID;
CREATE INDEX blob_links_digest ON blob_links(digest);

CREATE TABLE manifests (
    repository     TEXT NOT NULL REFERENCES repositories(name) ON DELETE CASCADE,
    digest         TEXT NOT NULL,
    media_type     TEXT NOT NULL,
    size           INTEGER NOT NULL,
    artifact_type  TEXT,
    subject        TEXT,
    annotations    TEXT,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (repository, digest)
) WITHOUT ROWID;
CREATE INDEX manifests_subject ON manifests(repository, subject);

CREATE TABLE manifest_references (
    repository  TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    digest      TEXT NOT NULL,
    PRIMARY KEY (repository, manifest, digest),
    FOREIGN KEY (repository, manifest) REFERENCES manifests(repository, digest) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE tags (
    repository  TEXT NOT NULL,
    tag         TEXT NOT NULL,
    digest      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (repository, tag),
    FOREIGN KEY (repository, digest) REFERENCES manifests(repository, digest) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE push_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    repository       TEXT NOT NULL,
    tag              TEXT,
    digest           TEXT NOT NULL,
    previous_digest  TEXT,
    at               INTEGER NOT NULL
);
CREATE INDEX push_events_repository ON push_events(repository, id);

CREATE TABLE tokens (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    secret_sha256  TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    last_used_at   INTEGER,
    revoked_at     INTEGER
);
