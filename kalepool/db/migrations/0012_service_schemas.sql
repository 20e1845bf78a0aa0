-- Each service owns its data: a schema per service, no reference across them, and
-- the grants of each service's database role.
--
-- shared   the guard functions every table's triggers use, and fault_party (both
--          services record whose fault a failure was)
-- wallet   the wallet service's: custodial_wallets, transactions, transaction_events
-- pool     the pool service's: everything else
--
-- The pool no longer reads the wallet's rows. What it needs of a wallet transaction
-- comes over WalletService (hash, ledger, outcome) and is kept in its own rows:
--   plantings, works, harvests   lose transaction_id (a foreign key into the wallet's
--                                transactions); each keeps tx_hash and ledger itself
--                                (tx_hash filled from the wallet's row where missing)
--   harvests.observed_on_chain   the chain follower recorded this harvest from the chain
--                                (someone else made it, or the follower read it before
--                                the wallet's answer was recorded); false: recorded from
--                                the wallet's answer, the pool's own harvest, which is
--                                what "transaction_id IS NOT NULL" told the follower
--   balance_ledger.tx_hash       the hash of the wallet transaction an entry from before
--                                0007 references; transaction_id stays as that entry's
--                                history, no longer a foreign key, and no new entry may
--                                set either (payouts reference `payouts` since 0007)
-- and the wallet no longer reads the pool's: transactions.farmer_id is the owner of the
-- signing wallet (custodial_wallets.owner_id, a farmer id), no longer a foreign key.
--
-- A payout transaction from before 0007 that failed or expired and was debited gets its
-- reversal here, the last time one can be checked against the wallet's row; one still
-- unsettled stops this migration (start the wallet service of the previous version so
-- that it settles it, then migrate).
--
-- Roles are the operator's (they are cluster-wide, and creating one takes CREATEROLE):
-- kalepool_wallet, kalepool_pool, kalepool_auditor. shared.grant_roles() grants each of
-- those that exists what it needs and nothing else; this file calls it, and so does
-- `kale-pool db migrate` every time (roles created later get their grants then).
--
-- From this file on, migrations name every object with its schema: the migrator's
-- session keeps its default search_path, where an unqualified new name lands in public.
-- The two append-only triggers disabled below are disabled for this transaction only,
-- by the owner, to fill the new columns of old rows.

CREATE SCHEMA shared;
CREATE SCHEMA wallet;
CREATE SCHEMA pool;

COMMENT ON SCHEMA shared IS 'guard functions and types both services'' tables use';
COMMENT ON SCHEMA wallet IS 'the wallet service''s: custodial keys and the transactions it signs';
COMMENT ON SCHEMA pool IS 'the pool service''s: registry, events, ledger, payouts, chain cursors';

-- Before anything moves: the last settlement across the two (see above) ----------------

DO $$
DECLARE
    stuck text;
BEGIN
    SELECT string_agg(DISTINCT t.id::text, ', ') INTO stuck
    FROM transactions t JOIN balance_ledger l ON l.transaction_id = t.id
    WHERE t.kind = 'payout' AND t.status IN ('prepared', 'submitted', 'pending');
    IF stuck IS NOT NULL THEN
        RAISE EXCEPTION 'payout transactions from before migration 0007 are still unsettled (%)', stuck
            USING HINT = 'Run the wallet service of the previous version until it settles them, then migrate.';
    END IF;
END;
$$;

INSERT INTO balance_ledger (farmer_id, amount, kind, transaction_id)
SELECT l.farmer_id, -l.amount, 'payout_reversal', l.transaction_id
FROM balance_ledger l JOIN transactions t ON t.id = l.transaction_id
WHERE l.kind = 'payout' AND t.kind = 'payout' AND t.status IN ('failed', 'expired')
  AND NOT EXISTS (SELECT 1 FROM balance_ledger r
                  WHERE r.transaction_id = l.transaction_id AND r.kind = 'payout_reversal');

-- Move every object to its owner's schema ------------------------------------------------

ALTER FUNCTION refuse_mutation() SET SCHEMA shared;
ALTER FUNCTION refuse_truncate() SET SCHEMA shared;
ALTER FUNCTION in_derived_write() SET SCHEMA shared;
ALTER FUNCTION guard_derived_columns() SET SCHEMA shared;
ALTER FUNCTION guard_immutable_columns() SET SCHEMA shared;
ALTER FUNCTION touch_updated_at() SET SCHEMA shared;
ALTER FUNCTION bytea_looks_like_plaintext(bytea) SET SCHEMA shared;
ALTER TYPE fault_party SET SCHEMA shared;

ALTER TABLE custodial_wallets SET SCHEMA wallet;
ALTER TABLE transactions SET SCHEMA wallet;
ALTER TABLE transaction_events SET SCHEMA wallet;
ALTER TYPE transaction_kind SET SCHEMA wallet;
ALTER TYPE transaction_status SET SCHEMA wallet;
ALTER FUNCTION transactions_check_transition() SET SCHEMA wallet;
ALTER FUNCTION transactions_record_event() SET SCHEMA wallet;

ALTER TABLE poolers SET SCHEMA pool;
ALTER TABLE pooler_api_keys SET SCHEMA pool;
ALTER TABLE farmers SET SCHEMA pool;
ALTER TABLE plantings SET SCHEMA pool;
ALTER TABLE works SET SCHEMA pool;
ALTER TABLE harvests SET SCHEMA pool;
ALTER TABLE pooler_compensations SET SCHEMA pool;
ALTER TABLE block_operations SET SCHEMA pool;
ALTER TABLE balance_ledger SET SCHEMA pool;
ALTER TABLE payouts SET SCHEMA pool;
ALTER TABLE plant_requests SET SCHEMA pool;
ALTER TABLE deposits SET SCHEMA pool;
ALTER TABLE chain_cursors SET SCHEMA pool;
ALTER VIEW compensation_status SET SCHEMA pool;
ALTER VIEW expected_farmer_balances SET SCHEMA pool;
ALTER VIEW expected_pooler_farmers SET SCHEMA pool;
ALTER VIEW expected_block_operations SET SCHEMA pool;
ALTER TYPE farmer_status SET SCHEMA pool;
ALTER TYPE event_status SET SCHEMA pool;
ALTER TYPE block_status SET SCHEMA pool;
ALTER TYPE compensation_type SET SCHEMA pool;
ALTER TYPE ledger_kind SET SCHEMA pool;
ALTER TYPE payout_status SET SCHEMA pool;
ALTER FUNCTION farmers_check_status_transition() SET SCHEMA pool;
ALTER FUNCTION farmers_count_in_pooler() SET SCHEMA pool;
ALTER FUNCTION events_fill_custodial_key() SET SCHEMA pool;
ALTER FUNCTION plantings_apply_to_block() SET SCHEMA pool;
ALTER FUNCTION works_apply_to_block() SET SCHEMA pool;
ALTER FUNCTION harvests_apply_to_block() SET SCHEMA pool;
ALTER FUNCTION balance_ledger_verify() SET SCHEMA pool;
ALTER FUNCTION balance_ledger_apply() SET SCHEMA pool;
ALTER FUNCTION plantings_post_stake() SET SCHEMA pool;
ALTER FUNCTION harvests_post_credit() SET SCHEMA pool;
ALTER FUNCTION consistency_problems() SET SCHEMA pool;
ALTER FUNCTION payouts_check_transition() SET SCHEMA pool;
ALTER FUNCTION balance_ledger_verify_payout() SET SCHEMA pool;
ALTER FUNCTION balance_ledger_verify_deposit() SET SCHEMA pool;
ALTER FUNCTION deposits_post_credit() SET SCHEMA pool;
ALTER FUNCTION payout_problems() SET SCHEMA pool;
ALTER FUNCTION rebuild_derived_state() SET SCHEMA pool;

-- Function bodies name tables without a schema: each resolves them in its own schema,
-- whoever calls it and whatever that session's search_path.
ALTER FUNCTION shared.guard_derived_columns() SET search_path = shared;
ALTER FUNCTION wallet.transactions_check_transition() SET search_path = wallet, shared;
ALTER FUNCTION wallet.transactions_record_event() SET search_path = wallet, shared;
ALTER FUNCTION pool.farmers_check_status_transition() SET search_path = pool, shared;
ALTER FUNCTION pool.farmers_count_in_pooler() SET search_path = pool, shared;
ALTER FUNCTION pool.events_fill_custodial_key() SET search_path = pool, shared;
ALTER FUNCTION pool.plantings_apply_to_block() SET search_path = pool, shared;
ALTER FUNCTION pool.works_apply_to_block() SET search_path = pool, shared;
ALTER FUNCTION pool.harvests_apply_to_block() SET search_path = pool, shared;
ALTER FUNCTION pool.balance_ledger_apply() SET search_path = pool, shared;
ALTER FUNCTION pool.plantings_post_stake() SET search_path = pool, shared;
ALTER FUNCTION pool.harvests_post_credit() SET search_path = pool, shared;
ALTER FUNCTION pool.payouts_check_transition() SET search_path = pool, shared;
ALTER FUNCTION pool.balance_ledger_verify_payout() SET search_path = pool, shared;
ALTER FUNCTION pool.balance_ledger_verify_deposit() SET search_path = pool, shared;
ALTER FUNCTION pool.deposits_post_credit() SET search_path = pool, shared;
ALTER FUNCTION pool.payout_problems() SET search_path = pool, shared;
ALTER FUNCTION pool.rebuild_derived_state() SET search_path = pool, shared;

-- Events keep their transaction's hash themselves ---------------------------------------

ALTER TABLE pool.plantings DISABLE TRIGGER plantings_append_only;
ALTER TABLE pool.works DISABLE TRIGGER works_append_only;
ALTER TABLE pool.harvests DISABLE TRIGGER harvests_append_only;
ALTER TABLE pool.balance_ledger DISABLE TRIGGER balance_ledger_append_only;

UPDATE pool.plantings e SET tx_hash = t.tx_hash
FROM wallet.transactions t WHERE t.id = e.transaction_id AND e.tx_hash IS NULL;
UPDATE pool.works e SET tx_hash = t.tx_hash
FROM wallet.transactions t WHERE t.id = e.transaction_id AND e.tx_hash IS NULL;
UPDATE pool.harvests e SET tx_hash = t.tx_hash
FROM wallet.transactions t WHERE t.id = e.transaction_id AND e.tx_hash IS NULL;

-- A successful harvest with no wallet transaction was recorded by the chain follower.
ALTER TABLE pool.harvests ADD COLUMN observed_on_chain boolean NOT NULL DEFAULT false;
UPDATE pool.harvests SET observed_on_chain = true
WHERE status = 'success' AND transaction_id IS NULL;
ALTER TABLE pool.harvests ADD CONSTRAINT harvests_observed_success
    CHECK (NOT observed_on_chain OR status = 'success');

ALTER TABLE pool.balance_ledger ADD COLUMN tx_hash text
    CONSTRAINT balance_ledger_tx_hash_format CHECK (tx_hash ~ '^[0-9a-f]{64}$');
UPDATE pool.balance_ledger l SET tx_hash = t.tx_hash
FROM wallet.transactions t WHERE t.id = l.transaction_id;

ALTER TABLE pool.plantings ENABLE TRIGGER plantings_append_only;
ALTER TABLE pool.works ENABLE TRIGGER works_append_only;
ALTER TABLE pool.harvests ENABLE TRIGGER harvests_append_only;
ALTER TABLE pool.balance_ledger ENABLE TRIGGER balance_ledger_append_only;

ALTER TABLE pool.plantings DROP COLUMN transaction_id;
ALTER TABLE pool.works DROP COLUMN transaction_id;
ALTER TABLE pool.harvests DROP COLUMN transaction_id;

-- Entries from before 0007 keep their wallet transaction's id as history; a new entry
-- names nothing of the wallet's (NOT VALID: the old rows are not checked, new ones are).
ALTER TABLE pool.balance_ledger DROP CONSTRAINT balance_ledger_transaction_id_fkey;
ALTER TABLE pool.balance_ledger ADD CONSTRAINT balance_ledger_no_wallet_reference
    CHECK (transaction_id IS NULL AND tx_hash IS NULL) NOT VALID;

-- The wallet links its transactions to its own wallets' owners.
ALTER TABLE wallet.transactions DROP CONSTRAINT transactions_farmer_id_fkey;

-- The ledger's checks no longer read transactions (0004's, without the payout
-- transaction branch: payouts are checked against `payouts` by balance_ledger_verify_payout).
CREATE OR REPLACE FUNCTION pool.balance_ledger_verify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pool, shared AS $$
DECLARE
    balance bigint;
    ref_farmer uuid;
    ref_amount bigint;
    ref_ok boolean;
BEGIN
    -- Lock the farmer: concurrent entries for one farmer serialise here, so the
    -- overdraft test below reads the latest balance.
    SELECT current_balance INTO balance FROM farmers WHERE id = NEW.farmer_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NEW;  -- the foreign key reports the unknown farmer
    END IF;

    -- A missing reference is left to balance_ledger_kind_shape to report.
    IF NEW.kind = 'harvest' AND NEW.harvest_id IS NOT NULL THEN
        SELECT farmer_id, reward_amount + stake_amount, status = 'success'
            INTO ref_farmer, ref_amount, ref_ok FROM harvests WHERE id = NEW.harvest_id;
        IF NOT FOUND OR NOT ref_ok OR ref_farmer <> NEW.farmer_id OR ref_amount <> NEW.amount THEN
            RAISE EXCEPTION 'a harvest entry must credit exactly reward + stake of a successful harvest of the same farmer'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
        END IF;
    ELSIF NEW.kind = 'stake' AND NEW.planting_id IS NOT NULL THEN
        SELECT farmer_id, -stake_amount, status = 'success'
            INTO ref_farmer, ref_amount, ref_ok FROM plantings WHERE id = NEW.planting_id;
        IF NOT FOUND OR NOT ref_ok OR ref_farmer <> NEW.farmer_id OR ref_amount <> NEW.amount THEN
            RAISE EXCEPTION 'a stake entry must debit exactly the stake of a successful planting of the same farmer'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
        END IF;
    ELSIF NEW.kind = 'compensation' AND NEW.compensation_id IS NOT NULL THEN
        SELECT farmer_id, amount INTO ref_farmer, ref_amount
            FROM pooler_compensations WHERE id = NEW.compensation_id;
        IF NOT FOUND OR ref_farmer <> NEW.farmer_id OR ref_amount <> NEW.amount THEN
            RAISE EXCEPTION 'a compensation entry must credit exactly the compensation owed to the same farmer'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
        END IF;
    END IF;

    IF NEW.amount < 0 AND NEW.kind IN ('payout', 'fee', 'adjustment') AND balance + NEW.amount < 0 THEN
        RAISE EXCEPTION 'farmer % has % stroops; a % of % would overdraw it',
            NEW.farmer_id, balance, NEW.kind, -NEW.amount
            USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_no_overdraft';
    END IF;
    RETURN NEW;
END;
$$;

-- The check, one home per service: the pool's derived state (0005's items 1-6), the
-- wallet's transaction trail (0005's item 7). 0005's item 8 (a failed payout
-- transaction never reversed) is settled above for good: no new entry can reference a
-- wallet transaction.
CREATE OR REPLACE FUNCTION pool.consistency_problems() RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pool, shared AS $$
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
    ) problems
    ORDER BY ord, problem
$$;

CREATE FUNCTION wallet.transaction_problems() RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = wallet, shared AS $$
    SELECT format('transaction %s: status is %s but its last recorded event says %s',
                  t.id, t.status, coalesce(last.to_status::text, 'nothing'))
    FROM transactions t
    LEFT JOIN LATERAL (
        SELECT te.to_status FROM transaction_events te
        WHERE te.transaction_id = t.id ORDER BY te.id DESC LIMIT 1
    ) last ON true
    WHERE last.to_status IS DISTINCT FROM t.status
    ORDER BY 1
$$;

-- Grants ---------------------------------------------------------------------------------

-- What each service's role may do, granted to each of the roles that exists (idempotent;
-- run by the owner). Nothing is PUBLIC's: a role sees a schema only where granted here.
-- Event tables: SELECT and INSERT only. UPDATE where the service updates rows (the
-- triggers still guard immutable and derived columns). No DELETE, TRUNCATE, REFERENCES
-- or TRIGGER anywhere, and no role but the owner may alter a table or disable a trigger.
-- Trigger functions need no EXECUTE grant; functions called from expressions do.
CREATE FUNCTION shared.grant_roles() RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    granted text[] := '{}';
    -- the runner's own table, read by every service to verify the schema at start-up
    migrations regclass := to_regclass('public.schema_migrations');
BEGIN
    REVOKE ALL ON SCHEMA shared, wallet, pool FROM PUBLIC;
    REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA shared, wallet, pool FROM PUBLIC;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kalepool_wallet') THEN
        GRANT USAGE ON SCHEMA wallet, shared TO kalepool_wallet;
        GRANT SELECT, INSERT ON wallet.custodial_wallets, wallet.transactions TO kalepool_wallet;
        -- closing a wallet, rewrapping its key under a new master key
        GRANT UPDATE (closed_at, ciphertext, nonce, key_id, key_version)
            ON wallet.custodial_wallets TO kalepool_wallet;
        -- a transaction's outcome (what was signed never changes)
        GRANT UPDATE (status, ledger, error_code, error_message, result_xdr, fee_charged,
                      return_value, contract_error, fault, rejected, settled_at)
            ON wallet.transactions TO kalepool_wallet;
        -- written by the status trigger, as the role that changed the status
        GRANT INSERT ON wallet.transaction_events TO kalepool_wallet;
        GRANT EXECUTE ON FUNCTION shared.bytea_looks_like_plaintext(bytea) TO kalepool_wallet;
        IF migrations IS NOT NULL THEN
            EXECUTE format('GRANT SELECT ON %s TO kalepool_wallet', migrations);
        END IF;
        granted := granted || 'kalepool_wallet'::text;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kalepool_pool') THEN
        GRANT USAGE ON SCHEMA pool, shared TO kalepool_pool;
        GRANT SELECT, INSERT ON pool.plantings, pool.works, pool.harvests,
            pool.pooler_compensations, pool.balance_ledger, pool.deposits TO kalepool_pool;
        GRANT SELECT, INSERT, UPDATE ON pool.poolers, pool.pooler_api_keys, pool.farmers,
            pool.block_operations, pool.payouts, pool.plant_requests, pool.chain_cursors
            TO kalepool_pool;
        GRANT SELECT ON pool.compensation_status TO kalepool_pool;
        GRANT EXECUTE ON FUNCTION shared.in_derived_write() TO kalepool_pool;
        IF migrations IS NOT NULL THEN
            EXECUTE format('GRANT SELECT ON %s TO kalepool_pool', migrations);
        END IF;
        granted := granted || 'kalepool_pool'::text;
    END IF;

    -- `kale-pool check`: reads both services' rows, writes nothing, and reads no
    -- secret (custodial_wallets without its ciphertext and nonce).
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kalepool_auditor') THEN
        GRANT USAGE ON SCHEMA pool, wallet, shared TO kalepool_auditor;
        GRANT SELECT ON ALL TABLES IN SCHEMA pool TO kalepool_auditor;
        GRANT SELECT ON wallet.transactions, wallet.transaction_events TO kalepool_auditor;
        GRANT SELECT (id, owner_id, public_key, key_id, key_version, created_at, updated_at,
                      closed_at)
            ON wallet.custodial_wallets TO kalepool_auditor;
        GRANT EXECUTE ON FUNCTION pool.consistency_problems(), pool.payout_problems(),
            wallet.transaction_problems() TO kalepool_auditor;
        IF migrations IS NOT NULL THEN
            EXECUTE format('GRANT SELECT ON %s TO kalepool_auditor', migrations);
        END IF;
        granted := granted || 'kalepool_auditor'::text;
    END IF;
    RETURN granted;
END;
$$;

SELECT shared.grant_roles();
