-- The counting triggers of 0005 named their table without its schema, so an
-- insert or update from a session whose search_path lacks gophermart (an
-- operator's psql, a monitoring job) failed. Name the schema.
CREATE OR REPLACE FUNCTION count_final_orders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE gophermart.order_status_counts SET n = 0;
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
    UPDATE gophermart.order_status_counts c SET n = c.n + s.delta
    FROM summed s
    WHERE c.status = s.status AND s.delta <> 0;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION count_inserted_orders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE gophermart.order_status_counts SET n = n + 1 WHERE status = NEW.status;
    RETURN NULL;
END;
$$;
