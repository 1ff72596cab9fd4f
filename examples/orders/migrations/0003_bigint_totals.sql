-- An organization's total of many orders outgrows INTEGER (2^31 - 1 cents, about
-- 21 million in currency): the totals move to a table whose amount is BIGINT. A new
-- table rather than ALTER COLUMN ... TYPE, which the SQLite fake does not speak.

CREATE TABLE organization_totals (
    organization_id TEXT PRIMARY KEY,
    orders INTEGER NOT NULL,
    amount_cents BIGINT NOT NULL
);

INSERT INTO organization_totals (organization_id, orders, amount_cents)
SELECT organization_id, orders, amount_cents FROM order_totals;

DROP TABLE order_totals;
