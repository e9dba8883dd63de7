-- The AWS-compatible APIs: whether a token also signs as an AWS access key, and what those APIs
-- keep beside berth's own state (resource tags, App Runner ids and autoscaling configurations,
-- ECR lifecycle policy texts), one JSON document per kind and name.
ALTER TABLE tokens ADD COLUMN aws INTEGER NOT NULL DEFAULT 0;

CREATE TABLE aws_resources (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    doc TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
