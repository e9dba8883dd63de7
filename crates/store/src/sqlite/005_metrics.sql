-- A service's metrics history: its points (berth_core::metrics::Point) in chunks, each chunk
-- the points of a stretch of time, encoded and compressed together (store::history).
CREATE TABLE metric_chunks (
    service TEXT NOT NULL,
    -- Seconds per point: 10 (kept a day) or 60 (kept a week).
    resolution INTEGER NOT NULL,
    -- The chunk's start, seconds since the Unix epoch.
    start INTEGER NOT NULL,
    points BLOB NOT NULL,
    PRIMARY KEY (service, resolution, start)
) WITHOUT ROWID;

-- The last traffic interval taken from each run of a router, so that an interval reported again
-- (to a restarted server) is not counted twice.
CREATE TABLE metric_runs (
    run TEXT PRIMARY KEY,
    upto INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX service_events_by_time ON service_events (service, at);
