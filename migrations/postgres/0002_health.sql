-- The readiness write probe: one row, rewritten by each probe.
-- IF NOT EXISTS: see 0001 (journals made before sqlx's migrator).
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, at TEXT NOT NULL);
