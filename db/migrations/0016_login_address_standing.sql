-- A client address's failed logins, on any logins, counted next to the
-- login-wide and pair counts of migration 0006 under a third key:
--   'address:<address>'            attempts on any login from one client address
-- An address that sprays made-up logins makes a fresh pair (and a fresh
-- login) at every attempt, so only this count sees it. It holds nobody back
-- by itself: the API reads it (with the pair's) before queueing a login for
-- hashing, and an address with many failures waits behind clean attempts
-- (api/passwords.py). Unknown logins and wrong passwords count alike, so the
-- count says nothing about which logins exist.

-- reserve_login_attempt, and when admitted one more hit on the address's row
-- (taken last: one lock order, no deadlock). Given back like the others.
CREATE FUNCTION reserve_login_attempt_counted(p_login text, p_address text, pair_limit integer,
                                              login_limit integer, free_failures integer,
                                              win interval)
RETURNS double precision LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    wait double precision;
    addr throttle;
BEGIN
    wait := reserve_login_attempt(p_login, p_address, pair_limit, login_limit,
                                  free_failures, win);
    IF wait IS NULL THEN
        addr := throttle_window('address:' || p_address, win, clock_timestamp());
        UPDATE throttle SET hits = hits + 1 WHERE key = addr.key;
    END IF;
    RETURN wait;
END;
$$;
