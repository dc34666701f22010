-- Guards at the API's edge that must hold across every API process and replica.
-- The functions keep the schema's search_path, so they work for any caller
-- (tools and scripts that name tables with their schema included).

-- Attempt counters for throttling, one row per key:
--   'login:<login>'                 every attempt on one login, from anywhere
--   'pair:<address> <login>'        attempts on one login from one client address
--   'register:<address>'            registrations from one client address
-- hits counts attempts in the window ending at window_end; next_at is the
-- earliest moment the key may try again (progressive delays). Rows whose
-- window and delay have both passed mean nothing and are swept.
CREATE TABLE throttle (
    key        text PRIMARY KEY,
    hits       integer NOT NULL DEFAULT 0 CHECK (hits >= 0),
    window_end timestamptz NOT NULL,
    next_at    timestamptz NOT NULL DEFAULT '-infinity'
);

CREATE INDEX throttle_expiry ON throttle (window_end);

-- Open (or restart, when its window has passed) the window of one key and
-- return its row locked for the rest of the transaction.
CREATE FUNCTION throttle_window(p_key text, win interval, t timestamptz)
RETURNS throttle LANGUAGE sql SET search_path FROM CURRENT AS $$
    INSERT INTO throttle AS r (key, hits, window_end) VALUES (p_key, 0, t + win)
    ON CONFLICT (key) DO UPDATE SET
        hits = CASE WHEN r.window_end <= t THEN 0 ELSE r.hits END,
        next_at = CASE WHEN r.window_end <= t THEN '-infinity' ELSE r.next_at END,
        window_end = CASE WHEN r.window_end <= t THEN t + win ELSE r.window_end END
    RETURNING *
$$;

-- Reserve one login attempt before its password is verified: NULL when
-- admitted (the attempt is counted as a failure until it is refunded), else
-- the seconds to wait. One call is one statement, so concurrent attempts on a
-- login queue on its row and none can slip past the count.
--
-- The pair (login, address) may fail free_failures times, then waits 1, 2,
-- 4, … seconds before each further attempt, and stops at pair_limit until its
-- window ends. The login-wide count stops, once it reaches login_limit, only
-- addresses that already failed on this login: an address with no failures
-- is never refused because of others' failures.
CREATE FUNCTION reserve_login_attempt(p_login text, p_address text, pair_limit integer,
                                      login_limit integer, free_failures integer,
                                      win interval)
RETURNS double precision LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    t timestamptz := clock_timestamp();
    whole throttle;
    pair throttle;
BEGIN
    -- Always the login-wide row first, then the pair: one lock order, no deadlock.
    whole := throttle_window('login:' || p_login, win, t);
    pair := throttle_window('pair:' || p_address || ' ' || p_login, win, t);
    IF pair.next_at > t THEN
        RETURN extract(epoch FROM pair.next_at - t);
    END IF;
    IF pair.hits >= pair_limit THEN
        RETURN extract(epoch FROM pair.window_end - t);
    END IF;
    IF pair.hits > 0 AND whole.hits >= login_limit THEN
        RETURN extract(epoch FROM whole.window_end - t);
    END IF;
    UPDATE throttle SET hits = hits + 1 WHERE key = whole.key;
    UPDATE throttle SET
        hits = hits + 1,
        next_at = CASE WHEN hits + 1 <= free_failures THEN '-infinity'
                       ELSE t + least(win, make_interval(secs => 2 ^ (hits - free_failures)))
                  END
    WHERE key = pair.key;
    RETURN NULL;
END;
$$;

-- One purchase, one owner: an order number uploaded by one customer cannot be
-- paid with points by another, nor a number paid with points by one customer
-- uploaded by another. The API's upload and withdrawal statements take the
-- same transaction-scoped advisory lock on the number before they insert, so
-- two racing ones are serialised and the second one's check (a statement of
-- its own inside the trigger) sees the first's committed row. The triggers
-- take no lock themselves: a bulk insert of many orders would need one per row.
CREATE FUNCTION order_number_owner_guard() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    other bigint;
BEGIN
    SELECT user_id INTO other FROM orders
    WHERE number = NEW.order_number AND user_id <> NEW.user_id;
    IF FOUND THEN
        RAISE EXCEPTION 'order number % belongs to another customer', NEW.order_number
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'order_number_owner';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER ledger_withdrawal_owner BEFORE INSERT ON ledger
    FOR EACH ROW WHEN (NEW.kind = 'withdrawal') EXECUTE FUNCTION order_number_owner_guard();

CREATE FUNCTION order_upload_owner_guard() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    -- A variable, not a literal: a cached generic plan could otherwise pick the
    -- partial index of withdrawals by user (its predicate is kind = 'withdrawal')
    -- and walk it, instead of looking the number up in UNIQUE (kind, order_number).
    withdrawal text := 'withdrawal';
BEGIN
    PERFORM FROM ledger
    WHERE kind = withdrawal AND order_number = NEW.number AND user_id <> NEW.user_id;
    IF FOUND THEN
        RAISE EXCEPTION 'order number % belongs to another customer', NEW.number
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'order_number_owner';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER orders_upload_owner BEFORE INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION order_upload_owner_guard();
