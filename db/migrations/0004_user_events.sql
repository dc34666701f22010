-- Tell the API processes that something a user sees has changed, so their
-- open event streams (GET /api/user/events) can say "look again" without
-- polling. The payload is the user id alone: listeners re-read through the
-- ordinary endpoints, so nothing else has to travel or be trusted here.
-- PostgreSQL folds identical notifications of one transaction into one, so a
-- worker batch that settles many orders of one user wakes that user once.

CREATE FUNCTION notify_user_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gophermart_user_change', NEW.user_id::text);
    RETURN NULL;
END;
$$;

-- A new order (another tab or device uploaded it).
CREATE TRIGGER orders_user_change_insert AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION notify_user_change();

-- The worker's status changes (NEW -> PROCESSING -> PROCESSED or INVALID);
-- re-claims and backoff updates leave the status alone and stay silent.
CREATE TRIGGER orders_user_change_status AFTER UPDATE OF status ON orders
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION notify_user_change();

-- Credits and withdrawals.
CREATE TRIGGER balances_user_change AFTER UPDATE ON balances
    FOR EACH ROW WHEN (OLD.current IS DISTINCT FROM NEW.current
                       OR OLD.withdrawn IS DISTINCT FROM NEW.withdrawn)
    EXECUTE FUNCTION notify_user_change();
