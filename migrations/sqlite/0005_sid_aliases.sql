-- SID continuity after a repair: the User's SID (US) and each restored
-- membership's participant SID (MB) change when Twilio's workaround
-- recreates them. One row per old -> new SID, per account and service,
-- written when the repair reads the new resource back; requests naming
-- the old SID are sent with the new one for repair.sid_alias_retention_secs
-- (created_at: RFC 3339, UTC, compared as text).
CREATE TABLE IF NOT EXISTS sid_aliases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    repair_id BIGINT NOT NULL,
    account_sid TEXT NOT NULL,
    service_sid TEXT NOT NULL,
    -- /v1/Services/IS... or /v1 (the account's default service)
    service_base TEXT NOT NULL,
    conversation_sid TEXT,
    old_sid TEXT NOT NULL,
    new_sid TEXT NOT NULL,
    UNIQUE (account_sid, old_sid, new_sid)
);
CREATE INDEX IF NOT EXISTS sid_aliases_old ON sid_aliases(account_sid, old_sid);
CREATE INDEX IF NOT EXISTS sid_aliases_repair ON sid_aliases(repair_id);
