-- The repair journal and the incidents.
--
-- IF NOT EXISTS: journals made before the move to sqlx's migrator carry
-- these tables (and a `schema_version` table, left in place) but no
-- `_sqlx_migrations` row; on them this migration changes nothing and is
-- recorded as applied, so an upgrade keeps every record.
CREATE TABLE IF NOT EXISTS repairs (
    id BIGSERIAL PRIMARY KEY,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    account_sid TEXT NOT NULL,
    credential_user TEXT NOT NULL,
    upstream TEXT NOT NULL,
    service_base TEXT NOT NULL,
    service_sid TEXT NOT NULL,
    identity TEXT NOT NULL,
    state TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    webhook TEXT,
    note TEXT
);
CREATE INDEX IF NOT EXISTS repairs_state ON repairs(state);
CREATE INDEX IF NOT EXISTS repairs_identity ON repairs(service_sid, identity, created_at);
CREATE TABLE IF NOT EXISTS incidents (
    id BIGSERIAL PRIMARY KEY,
    at TEXT NOT NULL,
    account_sid TEXT,
    service_sid TEXT,
    conversation_sid TEXT NOT NULL,
    identity TEXT,
    outcome TEXT NOT NULL,
    detail TEXT,
    repair_id BIGINT,
    steps TEXT NOT NULL
);
