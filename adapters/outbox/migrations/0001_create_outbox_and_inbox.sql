-- hexinfra's own tables (namespace "hexinfra"): the transactional outbox and the
-- idempotent inbox. Read by adapters.outbox; see ADR 0030.

-- One row per event added in a transaction; the relay publishes the unsent ones in
-- position order and stamps sent_at; sent rows are pruned after the retention.
CREATE TABLE hexinfra_outbox (
    position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    source TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    data TEXT NOT NULL,             -- the event's data as JSON text, exactly
    subject TEXT,                   -- NULL: the event's type
    request_id TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    sent_at TIMESTAMPTZ,
    error TEXT                      -- set when the broker refuses the event for good
);

CREATE INDEX hexinfra_outbox_unsent ON hexinfra_outbox (position) WHERE sent_at IS NULL;
CREATE INDEX hexinfra_outbox_sent_at ON hexinfra_outbox (sent_at);

-- One row per (durable, event) a handler has processed; pruned after the retention.
CREATE TABLE hexinfra_inbox (
    durable TEXT NOT NULL,
    event_id TEXT NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (durable, event_id)
);

CREATE INDEX hexinfra_inbox_processed_at ON hexinfra_inbox (processed_at);
