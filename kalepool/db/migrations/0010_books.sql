-- Books that follow the chain.
--
-- plant_requests   every plant the pool asked the wallet for, written *before* the
--                  wallet is called; one with no recorded outcome is driven again
--                  (same idempotency key) until its outcome is recorded, so a crash
--                  between the wallet's send and the pool's record loses nothing.
-- deposits         KALE that reached a custodial account from outside (a transfer
--                  or a mint not made by the pool), seen in the chain's events and
--                  credited to the balance ledger once, by its event id.
-- chain_cursors    where each chain follower stopped reading (resumes there).
-- works            may be recorded from the chain (observed_on_chain): the pail's
--                  worked state when a pooler's report never came.
-- poolers          the last heartbeat's figures.

-- Plant requests -------------------------------------------------------------

CREATE TABLE plant_requests (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- what the wallet signs under: plant:<farmer_id>:<block_index>
    idempotency_key text NOT NULL,
    farmer_id uuid NOT NULL REFERENCES farmers (id),
    pooler_id uuid NOT NULL REFERENCES poolers (id),
    -- the block the request named (the pail may land in the next one: plantings say where)
    block_index bigint NOT NULL,
    stake_amount bigint NOT NULL,
    attempts integer NOT NULL DEFAULT 1,
    requested_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- set once the outcome is recorded (or it is known that nothing was signed)
    settled_at timestamptz,
    -- the record that settled it, when there is one
    planting_id bigint REFERENCES plantings (id),
    CONSTRAINT plant_requests_key UNIQUE (idempotency_key),
    CONSTRAINT plant_requests_farmer_block UNIQUE (farmer_id, block_index),
    CONSTRAINT plant_requests_block_index_range CHECK (block_index BETWEEN 0 AND 4294967295),
    CONSTRAINT plant_requests_stake_nonnegative CHECK (stake_amount >= 0),
    CONSTRAINT plant_requests_attempts_positive CHECK (attempts >= 1)
);

-- the reconciler's work list
CREATE INDEX plant_requests_unsettled ON plant_requests (requested_at) WHERE settled_at IS NULL;

CREATE TRIGGER plant_requests_immutable BEFORE UPDATE ON plant_requests
    FOR EACH ROW EXECUTE FUNCTION guard_immutable_columns(
        'id', 'idempotency_key', 'farmer_id', 'pooler_id', 'block_index', 'requested_at');
CREATE TRIGGER plant_requests_updated_at BEFORE UPDATE ON plant_requests
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER plant_requests_no_delete BEFORE DELETE ON plant_requests
    FOR EACH ROW EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER plant_requests_no_truncate BEFORE TRUNCATE ON plant_requests
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_mutation();

-- Deposits -------------------------------------------------------------------

CREATE TABLE deposits (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the chain's event id (ledger, transaction, operation, event): one credit per event
    event_id text NOT NULL,
    farmer_id uuid NOT NULL REFERENCES farmers (id),
    custodial_public_key text NOT NULL,
    amount bigint NOT NULL,
    -- who sent it (G... or C...); NULL for a mint by the asset's issuer
    from_address text,
    tx_hash text NOT NULL,
    ledger bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deposits_event_id_key UNIQUE (event_id),
    CONSTRAINT deposits_event_id_format CHECK (event_id ~ '^[0-9]{19}-[0-9]{10}$'),
    CONSTRAINT deposits_amount_positive CHECK (amount > 0),
    CONSTRAINT deposits_tx_hash_format CHECK (tx_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT deposits_ledger_positive CHECK (ledger > 0)
);

CREATE INDEX deposits_farmer ON deposits (farmer_id, id);

CREATE TRIGGER deposits_append_only BEFORE UPDATE OR DELETE ON deposits
    FOR EACH ROW EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER deposits_no_truncate BEFORE TRUNCATE ON deposits
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER deposits_custodial_key BEFORE INSERT ON deposits
    FOR EACH ROW EXECUTE FUNCTION events_fill_custodial_key();

ALTER TABLE balance_ledger ADD COLUMN deposit_id bigint REFERENCES deposits (id);
CREATE UNIQUE INDEX balance_ledger_once_per_deposit ON balance_ledger (deposit_id);

ALTER TABLE balance_ledger DROP CONSTRAINT balance_ledger_kind_shape;
ALTER TABLE balance_ledger ADD CONSTRAINT balance_ledger_kind_shape CHECK (CASE kind
    WHEN 'harvest' THEN amount > 0 AND harvest_id IS NOT NULL
        AND num_nonnulls(planting_id, transaction_id, compensation_id, payout_id, deposit_id) = 0
    WHEN 'stake' THEN amount < 0 AND planting_id IS NOT NULL
        AND num_nonnulls(harvest_id, transaction_id, compensation_id, payout_id, deposit_id) = 0
    WHEN 'payout' THEN amount < 0 AND num_nonnulls(transaction_id, payout_id) = 1
        AND num_nonnulls(harvest_id, planting_id, compensation_id, deposit_id) = 0
    WHEN 'payout_reversal' THEN amount > 0 AND num_nonnulls(transaction_id, payout_id) = 1
        AND num_nonnulls(harvest_id, planting_id, compensation_id, deposit_id) = 0
    WHEN 'fee' THEN amount < 0
        AND num_nonnulls(harvest_id, planting_id, compensation_id, payout_id, deposit_id) = 0
    WHEN 'compensation' THEN amount > 0 AND compensation_id IS NOT NULL
        AND num_nonnulls(harvest_id, planting_id, transaction_id, payout_id, deposit_id) = 0
    WHEN 'adjustment' THEN note IS NOT NULL AND length(btrim(note)) > 0
        AND num_nonnulls(harvest_id, planting_id, transaction_id, compensation_id, payout_id,
                         deposit_id) = 0
    WHEN 'deposit' THEN amount > 0 AND deposit_id IS NOT NULL
        AND num_nonnulls(harvest_id, planting_id, transaction_id, compensation_id, payout_id) = 0
END);

-- A deposit entry credits exactly its deposit (balance_ledger_verify, which runs
-- first, holds the farmer's lock).
CREATE FUNCTION balance_ledger_verify_deposit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ref_farmer uuid;
    ref_amount bigint;
BEGIN
    IF NEW.deposit_id IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT farmer_id, amount INTO ref_farmer, ref_amount FROM deposits WHERE id = NEW.deposit_id;
    IF NOT FOUND OR ref_farmer <> NEW.farmer_id OR ref_amount <> NEW.amount THEN
        RAISE EXCEPTION 'a deposit entry must credit exactly the amount of a deposit of the same farmer'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER balance_ledger_verify_deposit BEFORE INSERT ON balance_ledger
    FOR EACH ROW EXECUTE FUNCTION balance_ledger_verify_deposit();

-- A deposit posts itself, like the other chain events (0004).
CREATE FUNCTION deposits_post_credit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO balance_ledger (farmer_id, amount, kind, deposit_id)
    VALUES (NEW.farmer_id, NEW.amount, 'deposit', NEW.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER deposits_ledger AFTER INSERT ON deposits
    FOR EACH ROW EXECUTE FUNCTION deposits_post_credit();

-- Chain cursors --------------------------------------------------------------

CREATE TABLE chain_cursors (
    name text PRIMARY KEY,
    -- the RPC's paging cursor (opaque), and the last ledger fully read
    cursor text,
    ledger bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT chain_cursors_name_format CHECK (name ~ '^[a-z0-9_.:-]{1,64}$'),
    CONSTRAINT chain_cursors_ledger_nonnegative CHECK (ledger >= 0)
);

CREATE TRIGGER chain_cursors_updated_at BEFORE UPDATE ON chain_cursors
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- Works observed on chain ----------------------------------------------------

ALTER TABLE works ADD COLUMN observed_on_chain boolean NOT NULL DEFAULT false;
ALTER TABLE works DROP CONSTRAINT works_outcome;
ALTER TABLE works ADD CONSTRAINT works_outcome CHECK (
    (status = 'success' AND fault = 'none' AND zeros IS NOT NULL AND gap IS NOT NULL
        AND error_code IS NULL AND error_message IS NULL
        AND (observed_on_chain
             OR (nonce IS NOT NULL AND hash IS NOT NULL AND tx_hash IS NOT NULL
                 AND ledger IS NOT NULL)))
    OR (status = 'failed' AND fault <> 'none' AND error_message IS NOT NULL));

-- Heartbeats -----------------------------------------------------------------

ALTER TABLE poolers
    ADD COLUMN last_heartbeat_at timestamptz,
    ADD COLUMN heartbeat_capacity integer,
    ADD COLUMN heartbeat_hashes_per_second bigint,
    ADD COLUMN heartbeat_threads integer,
    ADD COLUMN heartbeat_mining_farmers integer,
    ADD COLUMN heartbeat_agent_version text,
    ADD COLUMN heartbeat_block_index bigint,
    ADD CONSTRAINT poolers_heartbeat_ranges CHECK (
        heartbeat_capacity >= 0 AND heartbeat_hashes_per_second >= 0 AND heartbeat_threads >= 0
        AND heartbeat_mining_farmers >= 0 AND length(heartbeat_agent_version) <= 64
        AND heartbeat_block_index BETWEEN 0 AND 4294967295);

-- Consistency: deposits are credited once ------------------------------------

CREATE OR REPLACE FUNCTION payout_problems() RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT format('payout %s (%s) has %s debit entries, expected 1', p.id, p.status, count(l.id))
    FROM payouts p
    LEFT JOIN balance_ledger l ON l.payout_id = p.id AND l.kind = 'payout'
    GROUP BY p.id, p.status
    HAVING count(l.id) <> 1
    UNION ALL
    SELECT format('payout %s failed but was never reversed', p.id)
    FROM payouts p
    WHERE p.status = 'failed'
      AND EXISTS (SELECT 1 FROM balance_ledger l WHERE l.payout_id = p.id AND l.kind = 'payout')
      AND NOT EXISTS (
          SELECT 1 FROM balance_ledger l WHERE l.payout_id = p.id AND l.kind = 'payout_reversal')
    UNION ALL
    SELECT format('deposit %s (farmer %s, %s stroops) was never credited to the balance ledger',
                  d.id, d.farmer_id, d.amount)
    FROM deposits d
    WHERE NOT EXISTS (SELECT 1 FROM balance_ledger l WHERE l.deposit_id = d.id)
    UNION ALL
    SELECT format('plant request %s (farmer %s, block %s) is settled by planting %s of another farmer',
                  r.idempotency_key, r.farmer_id, r.block_index, r.planting_id)
    FROM plant_requests r JOIN plantings p ON p.id = r.planting_id
    WHERE p.farmer_id <> r.farmer_id
$$;

-- The rebuild posts missing deposit credits too (0005's, with deposits).
CREATE OR REPLACE FUNCTION rebuild_derived_state() RETURNS integer
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

    PERFORM set_config('kalepool.rebuilding_derived', '', true);
    RETURN changed;
END;
$$;
