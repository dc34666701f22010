-- The fair queue and a gate that cannot be turned against the fleet.

-- Two lanes: an order asked fewer than 8 times (its first ~25 s) is "fresh" and
-- is always claimed before any order that has been asked more often. Within a
-- lane, claims go round-robin over the users that have due orders, walking
-- this index one user at a time (see db/queue.py).
ALTER TABLE orders
    ADD COLUMN lane smallint GENERATED ALWAYS AS (CASE WHEN attempts < 8 THEN 0 ELSE 1 END) STORED;

-- (lane IS NOT NULL is always true: it keeps statements that do not name a
-- lane on orders_due, whose leading column bounds them.)
CREATE INDEX orders_queue ON orders (lane, user_id, next_attempt_at)
    WHERE status IN ('NEW', 'PROCESSING') AND lane IS NOT NULL;

-- Why an answer could not be applied (set aside, retried later); NULL when fine.
ALTER TABLE orders ADD COLUMN problem text;
CREATE INDEX orders_problems ON orders (id) WHERE problem IS NOT NULL;

-- paused_from: when the current pause began, so that a 429 arriving right after
-- a pause ended doubles the next one (strikes counts such repeats).
-- rate_until: the learned rate limit is forgotten after this, so one 429 that
-- announced a tiny limit cannot throttle the fleet for ever.
-- last_429_at: for operators (gophermart-admin gate show).
ALTER TABLE accrual_gate
    ADD COLUMN paused_from timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN strikes     integer NOT NULL DEFAULT 0,
    ADD COLUMN rate_until  timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN last_429_at timestamptz;

-- A rate learned before this migration had no expiry, and a pause no ceiling:
-- bound both by the defaults.
UPDATE accrual_gate
SET rate_until = CASE WHEN rate_per_minute IS NOT NULL THEN now() + interval '10 minutes'
                      ELSE rate_until END,
    paused_until = least(paused_until, now() + interval '10 minutes');
