-- Derived state recomputed from the events, a list of every disagreement, and
-- a rebuild. The triggers keep derived state right as events arrive; these
-- prove it (`kale-pool check`) and repair it if triggers were ever bypassed
-- (a superuser can disable them, a restore can skip them).

CREATE VIEW expected_farmer_balances AS
SELECT f.id AS farmer_id, coalesce(sum(l.amount), 0)::bigint AS current_balance
FROM farmers f
LEFT JOIN balance_ledger l ON l.farmer_id = f.id
GROUP BY f.id;

CREATE VIEW expected_pooler_farmers AS
SELECT p.id AS pooler_id, count(f.id) FILTER (WHERE f.status = 'active')::integer AS current_farmers
FROM poolers p
LEFT JOIN farmers f ON f.pooler_id = p.id
GROUP BY p.id;

CREATE VIEW expected_block_operations AS
WITH keys AS (
    SELECT pooler_id, block_index FROM plantings
    UNION SELECT pooler_id, block_index FROM works
    UNION SELECT pooler_id, block_index FROM harvests
    UNION SELECT pooler_id, block_index FROM block_operations
), p AS (
    SELECT pooler_id, block_index,
           count(DISTINCT farmer_id) AS total_farmers,
           count(*) FILTER (WHERE status = 'success') AS ok,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           sum(stake_amount) FILTER (WHERE status = 'success') AS staked
    FROM plantings GROUP BY pooler_id, block_index
), w AS (
    SELECT pooler_id, block_index,
           count(*) FILTER (WHERE status = 'success') AS ok,
           count(*) FILTER (WHERE status = 'failed') AS failed
    FROM works GROUP BY pooler_id, block_index
), h AS (
    SELECT pooler_id, block_index,
           count(*) FILTER (WHERE status = 'success') AS ok,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           sum(reward_amount) FILTER (WHERE status = 'success') AS rewards
    FROM harvests GROUP BY pooler_id, block_index
)
SELECT k.pooler_id, k.block_index,
       coalesce(p.total_farmers, 0)::integer AS total_farmers,
       coalesce(p.ok, 0)::integer AS successful_plants,
       coalesce(p.failed, 0)::integer AS failed_plants,
       coalesce(w.ok, 0)::integer AS successful_works,
       coalesce(w.failed, 0)::integer AS failed_works,
       coalesce(h.ok, 0)::integer AS successful_harvests,
       coalesce(h.failed, 0)::integer AS failed_harvests,
       coalesce(p.staked, 0)::bigint AS total_staked,
       coalesce(h.rewards, 0)::bigint AS total_rewards
FROM keys k
LEFT JOIN p USING (pooler_id, block_index)
LEFT JOIN w USING (pooler_id, block_index)
LEFT JOIN h USING (pooler_id, block_index);

-- One line per problem; none means derived state agrees with the events.
CREATE FUNCTION consistency_problems() RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT problem FROM (
        SELECT 1 AS ord, format('farmer %s: current_balance is %s but its ledger entries sum to %s',
                      f.id, f.current_balance, e.current_balance) AS problem
        FROM farmers f JOIN expected_farmer_balances e ON e.farmer_id = f.id
        WHERE f.current_balance <> e.current_balance
        UNION ALL
        SELECT 2, format('farmer %s: balance %s is negative; reconcile with the chain and record an adjustment',
                      f.id, f.current_balance)
        FROM farmers f WHERE f.current_balance < 0
        UNION ALL
        SELECT 3, format('pooler %s: current_farmers is %s but %s farmers are active',
                      p.id, p.current_farmers, e.current_farmers)
        FROM poolers p JOIN expected_pooler_farmers e ON e.pooler_id = p.id
        WHERE p.current_farmers <> e.current_farmers
        UNION ALL
        SELECT 4, CASE WHEN b.pooler_id IS NULL
                      THEN format('block %s of pooler %s: events exist but block_operations has no row',
                                  e.block_index, e.pooler_id)
                      ELSE format('block %s of pooler %s: block_operations totals %s disagree with the events %s',
                                  e.block_index, e.pooler_id,
                                  row(b.total_farmers, b.successful_plants, b.failed_plants,
                                      b.successful_works, b.failed_works, b.successful_harvests,
                                      b.failed_harvests, b.total_staked, b.total_rewards),
                                  row(e.total_farmers, e.successful_plants, e.failed_plants,
                                      e.successful_works, e.failed_works, e.successful_harvests,
                                      e.failed_harvests, e.total_staked, e.total_rewards))
                  END
        FROM expected_block_operations e
        LEFT JOIN block_operations b USING (pooler_id, block_index)
        WHERE b.pooler_id IS NULL
           OR row(b.total_farmers, b.successful_plants, b.failed_plants, b.successful_works,
                  b.failed_works, b.successful_harvests, b.failed_harvests, b.total_staked,
                  b.total_rewards)
              IS DISTINCT FROM
              row(e.total_farmers, e.successful_plants, e.failed_plants, e.successful_works,
                  e.failed_works, e.successful_harvests, e.failed_harvests, e.total_staked,
                  e.total_rewards)
        UNION ALL
        SELECT 5, format('harvest %s (farmer %s, block %s) was never credited to the balance ledger',
                      h.id, h.farmer_id, h.block_index)
        FROM harvests h
        WHERE h.status = 'success' AND h.reward_amount + h.stake_amount > 0
          AND NOT EXISTS (SELECT 1 FROM balance_ledger l WHERE l.harvest_id = h.id)
        UNION ALL
        SELECT 6, format('planting %s (farmer %s, block %s) stake was never debited in the balance ledger',
                      p.id, p.farmer_id, p.block_index)
        FROM plantings p
        WHERE p.status = 'success' AND p.stake_amount > 0
          AND NOT EXISTS (SELECT 1 FROM balance_ledger l WHERE l.planting_id = p.id)
        UNION ALL
        SELECT 7, format('transaction %s: status is %s but its last recorded event says %s',
                      t.id, t.status, coalesce(last.to_status::text, 'nothing'))
        FROM transactions t
        LEFT JOIN LATERAL (
            SELECT te.to_status FROM transaction_events te
            WHERE te.transaction_id = t.id ORDER BY te.id DESC LIMIT 1
        ) last ON true
        WHERE last.to_status IS DISTINCT FROM t.status
        UNION ALL
        SELECT 8, format('payout transaction %s is %s but its debit was never reversed', t.id, t.status)
        FROM transactions t
        WHERE t.kind = 'payout' AND t.status IN ('failed', 'expired')
          AND EXISTS (SELECT 1 FROM balance_ledger l WHERE l.transaction_id = t.id AND l.kind = 'payout')
          AND NOT EXISTS (SELECT 1 FROM balance_ledger l
                          WHERE l.transaction_id = t.id AND l.kind = 'payout_reversal')
    ) problems
    ORDER BY ord, problem
$$;

-- Recompute every derived value from the events; returns the number of rows it
-- changed (0 when everything already agreed). Missing automatic ledger entries
-- are posted first, then balances, counters and block totals are rewritten.
CREATE FUNCTION rebuild_derived_state() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    changed integer := 0;
    n integer;
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

    PERFORM set_config('kalepool.rebuilding_derived', '', true);
    RETURN changed;
END;
$$;
