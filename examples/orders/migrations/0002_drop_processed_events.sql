-- The totals projection's idempotency record moved to the library's inbox
-- (hexinfra_inbox, installed by adapters.outbox.install): the hand-written table of
-- handled event ids is no longer read or written.

DROP TABLE IF EXISTS processed_events;
