-- Orders in a final status, counted as they change, so that a metrics scrape
-- never counts the whole orders table (ten million rows: a second per scrape).
-- NEW and PROCESSING are still counted live, through the queue's partial index
-- orders_due: that count is the backlog and stays small.
CREATE TABLE order_status_counts (
    status text PRIMARY KEY CHECK (status IN ('INVALID', 'PROCESSED')),
    n      bigint NOT NULL CHECK (n >= 0)
);

INSERT INTO order_status_counts (status, n)
SELECT s, (SELECT count(*) FROM orders WHERE status = s)
FROM unnest(ARRAY['INVALID', 'PROCESSED']) AS s;

-- Orders are never deleted; TRUNCATE (tests, a reset) zeroes the counts.
-- Updates: one UPDATE per statement, however many rows it changed (the worker
-- applies answers in batches); a statement that changes no final status (a
-- claim) touches no counter row, so it never waits for one.
CREATE FUNCTION count_final_orders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE order_status_counts SET n = 0;
        RETURN NULL;
    END IF;
    WITH changes AS (
        SELECT status, count(*) AS delta FROM new_rows
        WHERE status IN ('INVALID', 'PROCESSED') GROUP BY status
        UNION ALL
        SELECT status, -count(*) FROM old_rows
        WHERE status IN ('INVALID', 'PROCESSED') GROUP BY status
    ), summed AS (
        SELECT status, sum(delta) AS delta FROM changes GROUP BY status
    )
    UPDATE order_status_counts c SET n = c.n + s.delta
    FROM summed s
    WHERE c.status = s.status AND s.delta <> 0;
    RETURN NULL;
END;
$$;

-- Orders inserted final (imports, tests): one row per call.
CREATE FUNCTION count_inserted_orders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE order_status_counts SET n = n + 1 WHERE status = NEW.status;
    RETURN NULL;
END;
$$;

-- Uploads insert NEW orders: the WHEN clause skips them without calling anything.
CREATE TRIGGER orders_count_final_inserts AFTER INSERT ON orders
    FOR EACH ROW WHEN (NEW.status IN ('INVALID', 'PROCESSED'))
    EXECUTE FUNCTION count_inserted_orders();

CREATE TRIGGER orders_count_final_updates AFTER UPDATE ON orders
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_final_orders();

CREATE TRIGGER orders_count_final_truncates AFTER TRUNCATE ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION count_final_orders();
