-- When a farmer's funding was confirmed and when it left, and the last heartbeat's cursor.
--
-- pool.farmers.funded_at  set when `is_funded` turns true (ConfirmFunding found the
--                         account funded and trusting KALE).
-- pool.farmers.left_at    set when the status leaves 'active' (LeavePool: 'leaving', or
--                         'departed' at once); 'leaving' to 'departed' keeps it.
--                         Both are written by the trigger below from those transitions,
--                         and only by it: a direct write is refused like any derived
--                         column. Farmers funded or gone before this migration keep them
--                         unset: nothing recorded when that happened.
-- pool.poolers.heartbeat_last_cursor
--                         the cursor of the last assignment the agent said it processed
--                         (HeartbeatRequest.last_cursor), beside the heartbeat's other
--                         figures.
--
-- The pool's role updates both tables already (table grants cover the new columns), and
-- a trigger function needs no EXECUTE grant: shared.grant_roles() is unchanged, called
-- again only so that the new function, like every other, is nobody's to call directly.

ALTER TABLE pool.farmers
    ADD COLUMN funded_at timestamptz,
    ADD COLUMN left_at timestamptz;

CREATE FUNCTION pool.farmers_stamp_transitions() RETURNS trigger
LANGUAGE plpgsql SET search_path = pool, shared AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.funded_at IS NOT NULL OR NEW.left_at IS NOT NULL THEN
            RAISE EXCEPTION 'farmers.funded_at and left_at are set by the status transitions; they cannot be written directly'
                USING ERRCODE = 'generated_always';
        END IF;
        NEW.funded_at := CASE WHEN NEW.is_funded THEN now() END;
        NEW.left_at := CASE WHEN NEW.status <> 'active' THEN now() END;
        RETURN NEW;
    END IF;
    IF NEW.funded_at IS DISTINCT FROM OLD.funded_at OR NEW.left_at IS DISTINCT FROM OLD.left_at THEN
        RAISE EXCEPTION 'farmers.funded_at and left_at are set by the status transitions; they cannot be written directly'
            USING ERRCODE = 'generated_always';
    END IF;
    IF NEW.is_funded <> OLD.is_funded THEN
        NEW.funded_at := CASE WHEN NEW.is_funded THEN now() END;
    END IF;
    IF (NEW.status = 'active') <> (OLD.status = 'active') THEN
        -- Leaving stamps the time; a return to 'active' (no code does it) clears it.
        NEW.left_at := CASE WHEN NEW.status <> 'active' THEN now() END;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER farmers_transition_times BEFORE INSERT OR UPDATE ON pool.farmers
    FOR EACH ROW EXECUTE FUNCTION pool.farmers_stamp_transitions();

ALTER TABLE pool.poolers
    ADD COLUMN heartbeat_last_cursor bigint,
    ADD CONSTRAINT poolers_heartbeat_last_cursor_range CHECK (heartbeat_last_cursor >= 0);

SELECT shared.grant_roles();
