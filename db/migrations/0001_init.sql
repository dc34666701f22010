-- Gophermart's tables, all in the gophermart schema (search_path points there).

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    login         text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- The cached balance. The ledger below is the record; this row is what
-- guarded UPDATEs lock, and CHECK is the backstop against overdraft.
CREATE TABLE balances (
    user_id   bigint PRIMARY KEY REFERENCES users (id),
    current   numeric(18, 2) NOT NULL DEFAULT 0 CHECK (current >= 0),
    withdrawn numeric(18, 2) NOT NULL DEFAULT 0 CHECK (withdrawn >= 0)
);

-- Uploaded orders; the queue state for the accrual worker lives on the row:
-- a worker claims a due order by pushing next_attempt_at forward by its
-- lease, so an order whose worker died becomes due again by itself.
CREATE TABLE orders (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number          text NOT NULL UNIQUE,
    user_id         bigint NOT NULL REFERENCES users (id),
    status          text NOT NULL DEFAULT 'NEW'
                    CHECK (status IN ('NEW', 'PROCESSING', 'INVALID', 'PROCESSED')),
    accrual         numeric(18, 2) CHECK (accrual >= 0),
    uploaded_at     timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    CHECK ((status = 'PROCESSED') = (accrual IS NOT NULL))
);

CREATE INDEX orders_by_user ON orders (user_id, uploaded_at DESC, id DESC);
CREATE INDEX orders_due ON orders (next_attempt_at) WHERE status IN ('NEW', 'PROCESSING');

-- Append-only record of every credit and debit. One accrual per order and
-- one withdrawal per order number, enforced here: that is exactly-once.
CREATE TABLE ledger (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id),
    kind         text NOT NULL CHECK (kind IN ('accrual', 'withdrawal')),
    order_number text NOT NULL,
    amount       numeric(18, 2) NOT NULL CHECK (amount > 0 OR (kind = 'accrual' AND amount = 0)),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, order_number)
);

CREATE INDEX ledger_withdrawals_by_user ON ledger (user_id, created_at DESC, id DESC)
    WHERE kind = 'withdrawal';

-- Wake the workers in the same transaction as the insert, whoever inserts.
CREATE FUNCTION notify_new_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gophermart_new_order', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER orders_notify AFTER INSERT ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION notify_new_order();

-- The fleet-wide accrual gate: one row every worker replica reads and writes.
-- paused_until: nobody calls the accrual system before it (429 Retry-After).
-- rate_per_minute: the limit the accrual system announced; next_slot: the
-- next free call slot for fleet-wide pacing under that limit.
CREATE TABLE accrual_gate (
    id              boolean PRIMARY KEY DEFAULT true CHECK (id),
    paused_until    timestamptz NOT NULL DEFAULT '-infinity',
    rate_per_minute integer CHECK (rate_per_minute > 0),
    next_slot       timestamptz NOT NULL DEFAULT '-infinity'
);

INSERT INTO accrual_gate DEFAULT VALUES;
