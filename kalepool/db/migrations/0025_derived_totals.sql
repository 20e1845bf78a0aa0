-- Derived totals, so the all-time statistics and the compensation sums read a few rows
-- instead of the whole history.
--
-- pool.block_outcomes(block, pooler)  one row per pooler of the block (or the one pooler
--                      asked for) with the outcome counts the API defines (docs/pool.md
--                      "Blocks and statistics"): the one home of those rules, read live by
--                      ListBlocks, GetBlock and the statistics, and remembered below.
--
-- pool.block_event_counts  the number of event rows of each block (every pooler's).
--
-- pool.settled_block_counts  one row per (pooler, block) of a settled block (a row of
--                      pool.settled_blocks): its outcome counts, and the number of event
--                      rows of the whole block (every pooler's plantings, works, harvests:
--                      the sum of its block_operations counters) they were computed on.
--                      Written only by the trigger on pool.settled_blocks, in the sweep's
--                      transaction, and by the owner's rebuild. The counts of a (pooler,
--                      block) depend on the block's events alone (a work or harvest of the
--                      same farmer counts whichever pooler recorded it), and the events are
--                      append-only: while the block's live count equals `events`, the row
--                      holds exactly what block_outcomes() would compute now. A block with a
--                      newer event is summed live until the sweep settles it again.
--
-- pool.compensation_totals  per (pooler, owed_by): the amounts of its compensations not
--                      yet paid and paid (paid = a balance_ledger entry names it). Kept by
--                      statement triggers on pool.pooler_compensations and
--                      pool.balance_ledger, in the transaction of the write.
--
-- pool.unpaid_compensations  the compensations not yet paid (id, farmer), kept by the
--                      same triggers.
--
-- All three are derived state: no service role may write them (the guard below; 0019's
-- shared.in_derived_write()), pool.derived_total_problems() reports any that disagree
-- with the events (`kale-pool check`), and pool.rebuild_derived_state() recomputes them.

-- The outcome counts -----------------------------------------------------------------

-- A work "failed or never came" (a planted pail with no work row and no harvest, which
-- proves it was worked: `unworked`, counted once the block is over by the reader), a
-- harvest "failed for good" (the pail is gone), and the pails still waiting for their
-- harvest. Each count probes the block's events alone. STABLE, in SQL, with no SET
-- clause, so the planner inlines it into the statement that calls it (the names are
-- schema-qualified for that reason: an inlined body resolves them in the caller).
CREATE FUNCTION pool.block_outcomes(p_block bigint, p_pooler uuid)
RETURNS TABLE (
    pooler_id uuid, block_index bigint, total_farmers integer, successful_plants integer,
    failed_plants integer, successful_works integer, failed_works bigint,
    successful_harvests integer, total_staked bigint, total_rewards bigint,
    plant_requested_at timestamptz, plant_completed_at timestamptz,
    work_completed_at timestamptz, harvest_completed_at timestamptz,
    unworked bigint, gone bigint, open_pails bigint, best_zeros integer)
LANGUAGE sql STABLE AS $$
SELECT b.pooler_id, b.block_index, b.total_farmers, b.successful_plants, b.failed_plants,
  b.successful_works,
  -- a failure observed on chain that confirms one the pooler reported is the same one
  b.failed_works - (SELECT count(*) FROM pool.works o WHERE o.pooler_id = b.pooler_id
     AND o.block_index = b.block_index AND o.status = 'failed' AND o.observed_on_chain
     AND EXISTS (SELECT 1 FROM pool.works r WHERE r.farmer_id = o.farmer_id
       AND r.block_index = o.block_index AND r.status = 'failed'
       AND NOT r.observed_on_chain)),
  b.successful_harvests, b.total_staked, b.total_rewards,
  b.plant_requested_at, b.plant_completed_at, b.work_completed_at, b.harvest_completed_at,
  (SELECT count(*) FROM pool.plantings p WHERE p.pooler_id = b.pooler_id
     AND p.block_index = b.block_index AND p.status = 'success' AND NOT EXISTS (
       SELECT 1 FROM pool.works w WHERE w.farmer_id = p.farmer_id
       AND w.block_index = p.block_index) AND NOT EXISTS (
       SELECT 1 FROM pool.harvests h WHERE h.farmer_id = p.farmer_id
       AND h.block_index = p.block_index AND h.status = 'success')),
  (SELECT count(*) FROM pool.harvests h WHERE h.pooler_id = b.pooler_id
     AND h.block_index = b.block_index AND h.error_code = 'PAIL_MISSING'),
  (SELECT count(*) FROM pool.works w WHERE w.pooler_id = b.pooler_id
     AND w.block_index = b.block_index AND w.status = 'success' AND NOT EXISTS (
       SELECT 1 FROM pool.harvests h WHERE h.farmer_id = w.farmer_id
       AND h.block_index = w.block_index
       AND (h.status = 'success' OR h.error_code = 'PAIL_MISSING'))),
  (SELECT coalesce(max(w.zeros), 0) FROM pool.works w WHERE w.pooler_id = b.pooler_id
     AND w.block_index = b.block_index AND w.status = 'success')
FROM pool.block_operations b WHERE b.block_index = p_block
  AND (p_pooler IS NULL OR b.pooler_id = p_pooler)
$$;

-- The number of event rows of each block, every pooler's: each event's insert raises one
-- of these counters of its (pooler, block) by one, in its own transaction, so in any
-- snapshot this is the number of the block's events (the compensation sweep's test of an
-- unchanged block, 0024, and the test of remembered counts below).
CREATE VIEW pool.block_event_counts AS
SELECT b.block_index, sum(b.successful_plants + b.failed_plants + b.successful_works
    + b.failed_works + b.successful_harvests + b.failed_harvests)::bigint AS events
FROM pool.block_operations b GROUP BY b.block_index;

-- Derived rows: written by a trigger (nested) or the owner's rebuild only ---------------

CREATE FUNCTION shared.guard_derived_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF shared.in_derived_write() THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    RAISE EXCEPTION '% is derived from the event tables and maintained by triggers; it cannot be written directly',
        TG_TABLE_NAME
        USING ERRCODE = 'generated_always',
              HINT = 'Insert the event instead; rebuild_derived_state() recomputes derived state.';
END;
$$;

-- Settled blocks' counts -----------------------------------------------------------------

CREATE TABLE pool.settled_block_counts (
    pooler_id           uuid NOT NULL REFERENCES pool.poolers (id),
    block_index         bigint NOT NULL CHECK (block_index BETWEEN 0 AND 4294967295),
    events              bigint NOT NULL CHECK (events >= 0),
    successful_plants   bigint NOT NULL,
    failed_plants       bigint NOT NULL,
    successful_works    bigint NOT NULL,
    failed_works        bigint NOT NULL,
    unworked            bigint NOT NULL,
    successful_harvests bigint NOT NULL,
    gone                bigint NOT NULL,
    total_staked        bigint NOT NULL,
    total_rewards       bigint NOT NULL,
    PRIMARY KEY (pooler_id, block_index)
);

CREATE TRIGGER settled_block_counts_derived BEFORE INSERT OR UPDATE OR DELETE
    ON pool.settled_block_counts FOR EACH ROW EXECUTE FUNCTION shared.guard_derived_rows();
CREATE TRIGGER settled_block_counts_no_truncate BEFORE TRUNCATE ON pool.settled_block_counts
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_truncate();

-- What the rows of one block must hold now (one home for the trigger, the check and the
-- rebuild). The events and the counts are read by one statement, so in one snapshot.
CREATE FUNCTION pool.expected_settled_block_counts(p_block bigint)
RETURNS SETOF pool.settled_block_counts
LANGUAGE sql STABLE AS $$
    SELECT o.pooler_id, o.block_index,
        coalesce((SELECT n.events FROM pool.block_event_counts n
            WHERE n.block_index = p_block), 0),
        o.successful_plants::bigint, o.failed_plants::bigint, o.successful_works::bigint,
        o.failed_works, o.unworked, o.successful_harvests::bigint, o.gone, o.total_staked,
        o.total_rewards
    FROM pool.block_outcomes(p_block, NULL) o
$$;

-- Remember (or refresh) the block's counts; returns the rows changed.
CREATE FUNCTION pool.remember_block_counts(p_block bigint) RETURNS integer
LANGUAGE plpgsql SET search_path = pool, shared AS $$
DECLARE
    n integer;
BEGIN
    INSERT INTO settled_block_counts AS s SELECT * FROM expected_settled_block_counts(p_block)
    ON CONFLICT (pooler_id, block_index) DO UPDATE SET
        events = EXCLUDED.events, successful_plants = EXCLUDED.successful_plants,
        failed_plants = EXCLUDED.failed_plants, successful_works = EXCLUDED.successful_works,
        failed_works = EXCLUDED.failed_works, unworked = EXCLUDED.unworked,
        successful_harvests = EXCLUDED.successful_harvests, gone = EXCLUDED.gone,
        total_staked = EXCLUDED.total_staked, total_rewards = EXCLUDED.total_rewards
    WHERE row(s.*) IS DISTINCT FROM row(EXCLUDED.*);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END;
$$;

-- The sweep remembers a block in pool.settled_blocks when it finds it settled, and
-- again when it found a newer event of it settled: the counts follow, in its
-- transaction.
CREATE FUNCTION pool.settled_blocks_remember_counts() RETURNS trigger
LANGUAGE plpgsql SET search_path = pool, shared AS $$
BEGIN
    PERFORM remember_block_counts(NEW.block_index);
    RETURN NULL;
END;
$$;

CREATE TRIGGER settled_blocks_counts AFTER INSERT OR UPDATE OF events ON pool.settled_blocks
    FOR EACH ROW EXECUTE FUNCTION pool.settled_blocks_remember_counts();

-- Compensation totals --------------------------------------------------------------------

CREATE TABLE pool.compensation_totals (
    pooler_id uuid NOT NULL REFERENCES pool.poolers (id),
    owed_by   shared.fault_party NOT NULL,
    unpaid    bigint NOT NULL,
    paid      bigint NOT NULL,
    PRIMARY KEY (pooler_id, owed_by)
);

CREATE TRIGGER compensation_totals_derived BEFORE INSERT OR UPDATE OR DELETE
    ON pool.compensation_totals FOR EACH ROW EXECUTE FUNCTION shared.guard_derived_rows();
CREATE TRIGGER compensation_totals_no_truncate BEFORE TRUNCATE ON pool.compensation_totals
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_truncate();

-- The compensations not yet paid (the shares loop pays the oldest first: it reads them
-- here, not past every paid one).
CREATE TABLE pool.unpaid_compensations (
    compensation_id bigint PRIMARY KEY REFERENCES pool.pooler_compensations (id),
    -- the compensation's farmer: the loop pays only farmers who can receive, so it
    -- starts from them, each one's oldest first
    farmer_id       uuid NOT NULL REFERENCES pool.farmers (id)
);

CREATE INDEX unpaid_compensations_farmer ON pool.unpaid_compensations (farmer_id, compensation_id);

CREATE TRIGGER unpaid_compensations_derived BEFORE INSERT OR UPDATE OR DELETE
    ON pool.unpaid_compensations FOR EACH ROW EXECUTE FUNCTION shared.guard_derived_rows();
CREATE TRIGGER unpaid_compensations_no_truncate BEFORE TRUNCATE ON pool.unpaid_compensations
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_truncate();

-- What the totals must hold: the compensations, paid when a ledger entry names them
-- (the same test as pool.compensation_status).
CREATE VIEW pool.expected_compensation_totals AS
SELECT c.pooler_id, c.owed_by,
       coalesce(sum(c.amount) FILTER (WHERE l.id IS NULL), 0)::bigint AS unpaid,
       coalesce(sum(c.amount) FILTER (WHERE l.id IS NOT NULL), 0)::bigint AS paid
FROM pool.pooler_compensations c
LEFT JOIN pool.balance_ledger l ON l.compensation_id = c.id
GROUP BY c.pooler_id, c.owed_by;

-- Add signed amounts to the totals, in key order (concurrent writers lock the rows in the
-- same order). One statement per writing statement: the sweep writes thousands of
-- compensations at once.
CREATE FUNCTION pool.compensations_written() RETURNS trigger
LANGUAGE plpgsql SET search_path = pool, shared AS $$
BEGIN
    INSERT INTO compensation_totals AS t (pooler_id, owed_by, unpaid, paid)
    SELECT pooler_id, owed_by, sum(amount), 0 FROM written
    GROUP BY pooler_id, owed_by ORDER BY pooler_id, owed_by
    ON CONFLICT (pooler_id, owed_by) DO UPDATE SET unpaid = t.unpaid + EXCLUDED.unpaid;
    INSERT INTO unpaid_compensations (compensation_id, farmer_id)
    SELECT w.id, w.farmer_id FROM written w
    WHERE NOT EXISTS (SELECT 1 FROM balance_ledger l WHERE l.compensation_id = w.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER pooler_compensations_totals AFTER INSERT ON pool.pooler_compensations
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION pool.compensations_written();

-- A ledger entry naming a compensation pays it (the ledger's shape allows one per
-- compensation, of its exact amount: balance_ledger_once_per_compensation and
-- balance_ledger_reference).
CREATE FUNCTION pool.compensations_paid() RETURNS trigger
LANGUAGE plpgsql SET search_path = pool, shared AS $$
BEGIN
    INSERT INTO compensation_totals AS t (pooler_id, owed_by, unpaid, paid)
    SELECT c.pooler_id, c.owed_by, -sum(c.amount), sum(c.amount)
    FROM written l JOIN pooler_compensations c ON c.id = l.compensation_id
    GROUP BY c.pooler_id, c.owed_by ORDER BY c.pooler_id, c.owed_by
    ON CONFLICT (pooler_id, owed_by) DO UPDATE
        SET unpaid = t.unpaid + EXCLUDED.unpaid, paid = t.paid + EXCLUDED.paid;
    DELETE FROM unpaid_compensations u USING written l
    WHERE u.compensation_id = l.compensation_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER balance_ledger_compensation_totals AFTER INSERT ON pool.balance_ledger
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION pool.compensations_paid();

-- The check and the rebuild --------------------------------------------------------------

CREATE FUNCTION pool.derived_total_problems() RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pool, shared AS $$
    SELECT problem FROM (
        SELECT 1 AS ord, format('compensation totals of pooler %s owed by %s: unpaid %s, paid %s but the compensations sum to unpaid %s, paid %s',
                      coalesce(t.pooler_id, e.pooler_id), coalesce(t.owed_by, e.owed_by),
                      coalesce(t.unpaid, 0), coalesce(t.paid, 0),
                      coalesce(e.unpaid, 0), coalesce(e.paid, 0)) AS problem
        FROM compensation_totals t
        FULL JOIN expected_compensation_totals e USING (pooler_id, owed_by)
        WHERE (coalesce(t.unpaid, 0), coalesce(t.paid, 0))
              IS DISTINCT FROM (coalesce(e.unpaid, 0), coalesce(e.paid, 0))
        UNION ALL
        SELECT 2, format('compensation %s: %s',
                      coalesce(u.compensation_id, c.id),
                      CASE WHEN u.compensation_id IS NULL
                               THEN 'unpaid but missing from unpaid_compensations'
                           WHEN c.id IS NULL THEN 'paid (or none) but in unpaid_compensations'
                           ELSE format('unpaid_compensations names farmer %s, not %s',
                                       u.farmer_id, c.farmer_id) END)
        FROM (SELECT c.id, c.farmer_id FROM pooler_compensations c WHERE NOT EXISTS (
                SELECT 1 FROM balance_ledger l WHERE l.compensation_id = c.id)) c
        FULL JOIN unpaid_compensations u ON u.compensation_id = c.id
        WHERE c.id IS NULL OR u.compensation_id IS NULL OR u.farmer_id <> c.farmer_id
        UNION ALL
        -- A remembered row counts only while its block's events are those it was computed
        -- on; one that counts must equal the live counts.
        SELECT 3, format('block %s of pooler %s: remembered counts %s disagree with the events %s',
                      s.block_index, s.pooler_id, s, e)
        FROM settled_block_counts s
        CROSS JOIN LATERAL expected_settled_block_counts(s.block_index) e
        WHERE e.pooler_id = s.pooler_id AND e.events = s.events
          AND row(s.*) IS DISTINCT FROM row(e.*)
        UNION ALL
        SELECT 4, format('block %s of pooler %s: counts are remembered but the pool took no part in it',
                      s.block_index, s.pooler_id)
        FROM settled_block_counts s
        WHERE NOT EXISTS (SELECT 1 FROM block_operations b
            WHERE b.pooler_id = s.pooler_id AND b.block_index = s.block_index)
    ) problems
    ORDER BY ord, problem
$$;

-- 0010's rebuild, plus the totals above: the compensation totals recomputed, the counts of
-- every settled block (and of any block with remembered counts) recomputed now.
CREATE OR REPLACE FUNCTION pool.rebuild_derived_state() RETURNS integer
LANGUAGE plpgsql SET search_path = pool, shared AS $$
DECLARE
    changed integer := 0;
    n integer;
    blk bigint;
BEGIN
    PERFORM set_config('kalepool.rebuilding_derived', 'on', true);

    INSERT INTO balance_ledger (farmer_id, amount, kind, harvest_id)
    SELECT h.farmer_id, h.reward_amount + h.stake_amount, 'harvest', h.id
    FROM harvests h
    WHERE h.status = 'success' AND h.reward_amount + h.stake_amount > 0
      AND NOT EXISTS (SELECT 1 FROM balance_ledger l WHERE l.harvest_id = h.id);
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := changed + n;

    INSERT INTO balance_ledger (farmer_id, amount, kind, planting_id)
    SELECT p.farmer_id, -p.stake_amount, 'stake', p.id
    FROM plantings p
    WHERE p.status = 'success' AND p.stake_amount > 0
      AND NOT EXISTS (SELECT 1 FROM balance_ledger l WHERE l.planting_id = p.id);
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := changed + n;

    INSERT INTO balance_ledger (farmer_id, amount, kind, deposit_id)
    SELECT d.farmer_id, d.amount, 'deposit', d.id
    FROM deposits d
    WHERE NOT EXISTS (SELECT 1 FROM balance_ledger l WHERE l.deposit_id = d.id);
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := changed + n;

    UPDATE farmers f SET current_balance = e.current_balance
    FROM expected_farmer_balances e
    WHERE e.farmer_id = f.id AND f.current_balance <> e.current_balance;
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := changed + n;

    UPDATE poolers p SET current_farmers = e.current_farmers
    FROM expected_pooler_farmers e
    WHERE e.pooler_id = p.id AND p.current_farmers <> e.current_farmers;
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := changed + n;

    INSERT INTO block_operations AS b (
        pooler_id, block_index, total_farmers, successful_plants, failed_plants,
        successful_works, failed_works, successful_harvests, failed_harvests,
        total_staked, total_rewards)
    SELECT pooler_id, block_index, total_farmers, successful_plants, failed_plants,
           successful_works, failed_works, successful_harvests, failed_harvests,
           total_staked, total_rewards
    FROM expected_block_operations
    ON CONFLICT (pooler_id, block_index) DO UPDATE SET
        total_farmers = EXCLUDED.total_farmers,
        successful_plants = EXCLUDED.successful_plants,
        failed_plants = EXCLUDED.failed_plants,
        successful_works = EXCLUDED.successful_works,
        failed_works = EXCLUDED.failed_works,
        successful_harvests = EXCLUDED.successful_harvests,
        failed_harvests = EXCLUDED.failed_harvests,
        total_staked = EXCLUDED.total_staked,
        total_rewards = EXCLUDED.total_rewards
    WHERE row(b.total_farmers, b.successful_plants, b.failed_plants, b.successful_works,
              b.failed_works, b.successful_harvests, b.failed_harvests, b.total_staked,
              b.total_rewards)
          IS DISTINCT FROM
          row(EXCLUDED.total_farmers, EXCLUDED.successful_plants, EXCLUDED.failed_plants,
              EXCLUDED.successful_works, EXCLUDED.failed_works, EXCLUDED.successful_harvests,
              EXCLUDED.failed_harvests, EXCLUDED.total_staked, EXCLUDED.total_rewards);
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := changed + n;

    -- The compensation totals, after the ledger above (nothing in it pays one).
    INSERT INTO compensation_totals AS t (pooler_id, owed_by, unpaid, paid)
    SELECT pooler_id, owed_by, unpaid, paid FROM expected_compensation_totals
    ON CONFLICT (pooler_id, owed_by) DO UPDATE
        SET unpaid = EXCLUDED.unpaid, paid = EXCLUDED.paid
    WHERE (t.unpaid, t.paid) IS DISTINCT FROM (EXCLUDED.unpaid, EXCLUDED.paid);
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := changed + n;
    DELETE FROM compensation_totals t WHERE NOT EXISTS (
        SELECT 1 FROM pooler_compensations c
        WHERE c.pooler_id = t.pooler_id AND c.owed_by = t.owed_by);
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := changed + n;

    DELETE FROM unpaid_compensations u
    WHERE EXISTS (SELECT 1 FROM balance_ledger l WHERE l.compensation_id = u.compensation_id)
       OR NOT EXISTS (SELECT 1 FROM pooler_compensations c
                      WHERE c.id = u.compensation_id AND c.farmer_id = u.farmer_id);
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := changed + n;
    INSERT INTO unpaid_compensations (compensation_id, farmer_id)
    SELECT c.id, c.farmer_id FROM pooler_compensations c
    WHERE NOT EXISTS (SELECT 1 FROM balance_ledger l WHERE l.compensation_id = c.id)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := changed + n;

    -- The settled blocks' counts, after block_operations above (they are read from it).
    DELETE FROM settled_block_counts s WHERE NOT EXISTS (SELECT 1 FROM block_operations b
        WHERE b.pooler_id = s.pooler_id AND b.block_index = s.block_index);
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := changed + n;
    FOR blk IN SELECT block_index FROM settled_blocks
               UNION SELECT block_index FROM settled_block_counts ORDER BY 1 LOOP
        changed := changed + remember_block_counts(blk);
    END LOOP;

    PERFORM set_config('kalepool.rebuilding_derived', '', true);
    RETURN changed;
END;
$$;

-- The pool's triggers write the totals as the pool's role (the guard refuses anything
-- else: a direct call of pool.remember_block_counts() included); the auditor reads them
-- and runs the check.
INSERT INTO shared.role_grants (role, statement, added_by) VALUES
    ('kalepool_pool',
     'GRANT SELECT, INSERT, UPDATE ON pool.settled_block_counts, pool.compensation_totals'
     ' TO kalepool_pool', '0025'),
    ('kalepool_pool',
     'GRANT SELECT, INSERT, DELETE ON pool.unpaid_compensations TO kalepool_pool', '0025'),
    ('kalepool_pool', 'GRANT SELECT ON pool.block_event_counts TO kalepool_pool', '0025'),
    ('kalepool_pool',
     'GRANT EXECUTE ON FUNCTION pool.block_outcomes(bigint, uuid),'
     ' pool.expected_settled_block_counts(bigint), pool.remember_block_counts(bigint)'
     ' TO kalepool_pool', '0025'),
    ('kalepool_auditor',
     'GRANT EXECUTE ON FUNCTION pool.derived_total_problems(), pool.block_outcomes(bigint, uuid),'
     ' pool.expected_settled_block_counts(bigint) TO kalepool_auditor', '0025');

SELECT shared.grant_roles();
