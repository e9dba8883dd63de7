-- Services and what happens to them. Specs, revisions and operations are JSON documents owned
-- by berth-services; the columns here are what is looked up or ordered by.
CREATE TABLE services (
    name TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE revisions (
    service TEXT NOT NULL,
    number INTEGER NOT NULL,
    doc TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (service, number)
);

CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    open INTEGER NOT NULL,
    doc TEXT NOT NULL,
    started_at INTEGER NOT NULL
);
CREATE INDEX operations_by_service ON operations (service, started_at);
CREATE INDEX open_operations ON operations (open) WHERE open = 1;

CREATE TABLE service_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX service_events_by_service ON service_events (service, id);
