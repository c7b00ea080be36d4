-- The Twilio-Request-Id of the intercepted 404/20404 itself (the caller's
-- create as the proxy forwarded it), for the support bundle; and indexes
-- for the incidents page's summary (by time) and filters.
ALTER TABLE incidents ADD COLUMN request_id TEXT;
CREATE INDEX IF NOT EXISTS incidents_at ON incidents(at);
CREATE INDEX IF NOT EXISTS incidents_service_identity ON incidents(service_sid, identity);
