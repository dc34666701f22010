-- Giving back a login attempt takes the rows in the order reserving one does
-- (the login-wide row, then the pair, then the address; migrations 0006 and
-- 0016). As one statement of three data-modifying parts its row locks came in
-- no set order, so a refund and a concurrent reservation of the same pair
-- could each hold the row the other wanted: a deadlock, and a failed login.
CREATE FUNCTION refund_login_attempt(p_login text, p_address text, succeeded boolean)
RETURNS void LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE throttle SET hits = greatest(hits - 1, 0) WHERE key = 'login:' || p_login;
    IF succeeded THEN
        -- Success forgets the pair's failures.
        DELETE FROM throttle WHERE key = 'pair:' || p_address || ' ' || p_login;
    ELSE
        UPDATE throttle SET hits = greatest(hits - 1, 0)
        WHERE key = 'pair:' || p_address || ' ' || p_login;
    END IF;
    UPDATE throttle SET hits = greatest(hits - 1, 0) WHERE key = 'address:' || p_address;
END;
$$;
