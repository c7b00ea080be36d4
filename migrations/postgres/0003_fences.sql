-- The cross-replica fence of a live repair, from the moment it takes the
-- identity's lock (before its journal record exists, while it reads the
-- snapshot) until it lets go. A row outlives a crashed holder only until
-- `until` (RFC 3339, UTC, whole seconds: compared as text).
CREATE TABLE IF NOT EXISTS fences (
    id BIGSERIAL PRIMARY KEY,
    identity TEXT NOT NULL,
    until TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS fences_identity ON fences(identity);
