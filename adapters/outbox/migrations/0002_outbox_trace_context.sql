-- W3C trace context of the span that added each outbox row (ADR 0031): the relay
-- publishes it as ce-traceparent / ce-tracestate, so the trace runs request -> outbox
-- -> send -> process. NULL when no span was active (the send starts a new trace).
ALTER TABLE hexinfra_outbox ADD COLUMN traceparent TEXT;
ALTER TABLE hexinfra_outbox ADD COLUMN tracestate TEXT;
