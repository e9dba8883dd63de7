-- Private networks: a JSON document each (the spec), owned by the controller.
CREATE TABLE networks (
    name TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
