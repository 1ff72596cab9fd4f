-- The orders service's first schema: orders, the projection's totals, and the
-- events the projection has already handled (its idempotency record).
--
-- IF NOT EXISTS only in this first file: a database created by the example before it
-- used migrations already has these tables, and adopts this version as its baseline.
-- Later files change the schema with plain CREATE / ALTER statements.
-- The same SQL runs on PostgreSQL and on the SQLite fake (the documented subset).

CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    customer TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    created_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS order_totals (
    organization_id TEXT PRIMARY KEY,
    orders INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL
);

-- Event ids the totals projection has counted: a redelivered event is skipped.
CREATE TABLE IF NOT EXISTS processed_events (
    event_id TEXT PRIMARY KEY
);
