-- The audit trail of the farming cycle: plantings, works and harvests (one row
-- per attempt, success or failure with whose fault it was), compensations owed,
-- and block_operations, the per-(pooler, block) record whose totals are derived
-- from the events by triggers.

CREATE TYPE event_status AS ENUM ('success', 'failed');
CREATE TYPE fault_party AS ENUM ('none', 'farmer', 'pool', 'pooler', 'chain');
CREATE TYPE block_status AS ENUM ('active', 'completed', 'failed');
CREATE TYPE compensation_type AS ENUM ('plant_failure', 'work_failure', 'harvest_failure');

-- Event rows name the custodial wallet that acted (the audit record must not
-- depend on a join). The trigger fills it from the farmer and refuses a
-- mismatch, so it cannot be wrong.
CREATE FUNCTION events_fill_custodial_key() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    farmer_key text;
BEGIN
    SELECT custodial_public_key INTO farmer_key FROM farmers WHERE id = NEW.farmer_id;
    IF NOT FOUND THEN
        RETURN NEW;  -- the foreign key reports the unknown farmer
    END IF;
    IF NEW.custodial_public_key IS NULL THEN
        NEW.custodial_public_key := farmer_key;
    ELSIF NEW.custodial_public_key <> farmer_key THEN
        RAISE EXCEPTION '%.custodial_public_key does not match farmer %', TG_TABLE_NAME, NEW.farmer_id
            USING ERRCODE = 'check_violation', CONSTRAINT = TG_TABLE_NAME || '_custodial_key_matches';
    END IF;
    RETURN NEW;
END;
$$;

-- Plantings ------------------------------------------------------------------

CREATE TABLE plantings (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    block_index bigint NOT NULL,
    farmer_id uuid NOT NULL REFERENCES farmers (id),
    pooler_id uuid NOT NULL REFERENCES poolers (id),
    custodial_public_key text NOT NULL,
    -- KALE burned by plant(), in stroops
    stake_amount bigint NOT NULL DEFAULT 0,
    transaction_id uuid REFERENCES transactions (id),
    tx_hash text,
    -- the plant's ledger: pail.sequence, from which the work gap counts
    ledger bigint,
    status event_status NOT NULL,
    fault fault_party NOT NULL DEFAULT 'none',
    error_code text,
    error_message text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT plantings_block_index_range CHECK (block_index BETWEEN 0 AND 4294967295),
    CONSTRAINT plantings_stake_nonnegative CHECK (stake_amount >= 0),
    CONSTRAINT plantings_tx_hash_format CHECK (tx_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT plantings_ledger_positive CHECK (ledger > 0),
    CONSTRAINT plantings_outcome CHECK (
        (status = 'success' AND fault = 'none' AND tx_hash IS NOT NULL AND ledger IS NOT NULL
            AND error_code IS NULL AND error_message IS NULL)
        OR (status = 'failed' AND fault <> 'none' AND error_message IS NOT NULL))
);

-- One successful plant per (farmer, block); failures may repeat.
CREATE UNIQUE INDEX plantings_one_success ON plantings (farmer_id, block_index) WHERE status = 'success';
CREATE INDEX plantings_block_pooler ON plantings (block_index, pooler_id);
CREATE INDEX plantings_farmer_block ON plantings (farmer_id, block_index);

-- Works ----------------------------------------------------------------------

CREATE TABLE works (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    block_index bigint NOT NULL,
    farmer_id uuid NOT NULL REFERENCES farmers (id),
    pooler_id uuid NOT NULL REFERENCES poolers (id),
    custodial_public_key text NOT NULL,
    nonce numeric(20, 0),
    hash bytea,
    zeros integer,
    gap integer,
    -- the pooler's account that submitted work() and paid its fee
    source_account text,
    transaction_id uuid REFERENCES transactions (id),
    tx_hash text,
    ledger bigint,
    status event_status NOT NULL,
    fault fault_party NOT NULL DEFAULT 'none',
    error_code text,
    error_message text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT works_block_index_range CHECK (block_index BETWEEN 0 AND 4294967295),
    CONSTRAINT works_nonce_u64 CHECK (nonce BETWEEN 0 AND 18446744073709551615),
    CONSTRAINT works_hash_length CHECK (octet_length(hash) = 32),
    CONSTRAINT works_zeros_range CHECK (zeros BETWEEN 0 AND 64),
    -- work cannot land in the plant's own ledger (contract error #15)
    CONSTRAINT works_gap_positive CHECK (gap >= 1),
    CONSTRAINT works_source_account_format
        CHECK (source_account ~ '^G[A-Z2-7]{55}$' OR source_account ~ '^M[A-Z2-7]{68}$'),
    CONSTRAINT works_tx_hash_format CHECK (tx_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT works_ledger_positive CHECK (ledger > 0),
    CONSTRAINT works_outcome CHECK (
        (status = 'success' AND fault = 'none'
            AND nonce IS NOT NULL AND hash IS NOT NULL AND zeros IS NOT NULL AND gap IS NOT NULL
            AND tx_hash IS NOT NULL AND ledger IS NOT NULL
            AND error_code IS NULL AND error_message IS NULL)
        OR (status = 'failed' AND fault <> 'none' AND error_message IS NOT NULL))
);

-- One accepted work per (farmer, block); failures may repeat.
CREATE UNIQUE INDEX works_one_success ON works (farmer_id, block_index) WHERE status = 'success';
CREATE INDEX works_block_pooler ON works (block_index, pooler_id);
CREATE INDEX works_farmer_block ON works (farmer_id, block_index);

-- Harvests -------------------------------------------------------------------

CREATE TABLE harvests (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    block_index bigint NOT NULL,
    farmer_id uuid NOT NULL REFERENCES farmers (id),
    pooler_id uuid NOT NULL REFERENCES poolers (id),
    custodial_public_key text NOT NULL,
    -- what harvest() returned: the reward, excluding the stake
    reward_amount bigint,
    -- the pail's stake, minted back together with the reward
    stake_amount bigint,
    transaction_id uuid REFERENCES transactions (id),
    tx_hash text,
    ledger bigint,
    status event_status NOT NULL,
    fault fault_party NOT NULL DEFAULT 'none',
    error_code text,
    error_message text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT harvests_block_index_range CHECK (block_index BETWEEN 0 AND 4294967295),
    CONSTRAINT harvests_reward_nonnegative CHECK (reward_amount >= 0),
    CONSTRAINT harvests_stake_nonnegative CHECK (stake_amount >= 0),
    CONSTRAINT harvests_tx_hash_format CHECK (tx_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT harvests_ledger_positive CHECK (ledger > 0),
    CONSTRAINT harvests_outcome CHECK (
        (status = 'success' AND fault = 'none'
            AND reward_amount IS NOT NULL AND stake_amount IS NOT NULL
            AND tx_hash IS NOT NULL AND ledger IS NOT NULL
            AND error_code IS NULL AND error_message IS NULL)
        OR (status = 'failed' AND fault <> 'none' AND error_message IS NOT NULL))
);

-- One harvest per (farmer, block); failures (retries) may repeat.
CREATE UNIQUE INDEX harvests_one_success ON harvests (farmer_id, block_index) WHERE status = 'success';
CREATE INDEX harvests_block_pooler ON harvests (block_index, pooler_id);
CREATE INDEX harvests_farmer_block ON harvests (farmer_id, block_index);

-- Compensations --------------------------------------------------------------

-- What a farmer is owed because someone else failed (the pool backend for a
-- failed plant or a lost harvest, the pooler for missing or late work). Paying
-- it is a balance_ledger entry of kind 'compensation' (see 0004).
CREATE TABLE pooler_compensations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pooler_id uuid NOT NULL REFERENCES poolers (id),
    farmer_id uuid NOT NULL REFERENCES farmers (id),
    block_index bigint NOT NULL,
    compensation_type compensation_type NOT NULL,
    owed_by fault_party NOT NULL,
    amount bigint NOT NULL,
    reason text NOT NULL,
    -- the failure that caused it, when one was recorded (missing work has no row)
    planting_id bigint REFERENCES plantings (id),
    work_id bigint REFERENCES works (id),
    harvest_id bigint REFERENCES harvests (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pooler_compensations_once UNIQUE (farmer_id, block_index, compensation_type),
    CONSTRAINT pooler_compensations_block_index_range CHECK (block_index BETWEEN 0 AND 4294967295),
    CONSTRAINT pooler_compensations_owed_by CHECK (owed_by IN ('pool', 'pooler')),
    CONSTRAINT pooler_compensations_amount_positive CHECK (amount > 0),
    CONSTRAINT pooler_compensations_reason_present CHECK (length(btrim(reason)) > 0)
);

CREATE INDEX pooler_compensations_pooler_block ON pooler_compensations (pooler_id, block_index);
CREATE INDEX pooler_compensations_farmer ON pooler_compensations (farmer_id);

-- Append-only, in the database itself -----------------------------------------

CREATE TRIGGER plantings_append_only BEFORE UPDATE OR DELETE ON plantings
    FOR EACH ROW EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER plantings_no_truncate BEFORE TRUNCATE ON plantings
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER works_append_only BEFORE UPDATE OR DELETE ON works
    FOR EACH ROW EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER works_no_truncate BEFORE TRUNCATE ON works
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER harvests_append_only BEFORE UPDATE OR DELETE ON harvests
    FOR EACH ROW EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER harvests_no_truncate BEFORE TRUNCATE ON harvests
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER pooler_compensations_append_only BEFORE UPDATE OR DELETE ON pooler_compensations
    FOR EACH ROW EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER pooler_compensations_no_truncate BEFORE TRUNCATE ON pooler_compensations
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_mutation();

CREATE TRIGGER plantings_custodial_key BEFORE INSERT ON plantings
    FOR EACH ROW EXECUTE FUNCTION events_fill_custodial_key();
CREATE TRIGGER works_custodial_key BEFORE INSERT ON works
    FOR EACH ROW EXECUTE FUNCTION events_fill_custodial_key();
CREATE TRIGGER harvests_custodial_key BEFORE INSERT ON harvests
    FOR EACH ROW EXECUTE FUNCTION events_fill_custodial_key();

-- Block operations -----------------------------------------------------------

-- One row per (pooler, block). The pool service creates it when a plant is
-- requested (INSERT ... ON CONFLICT DO NOTHING makes the request idempotent)
-- and owns the phase timestamps and status; the counters and totals are
-- derived from the events and written by triggers only.
CREATE TABLE block_operations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    pooler_id uuid NOT NULL REFERENCES poolers (id),
    block_index bigint NOT NULL,
    status block_status NOT NULL DEFAULT 'active',
    plant_requested_at timestamptz,
    plant_completed_at timestamptz,
    work_completed_at timestamptz,
    harvest_completed_at timestamptz,
    -- derived from the events (triggers below):
    total_farmers integer NOT NULL DEFAULT 0,      -- distinct farmers with a planting row
    successful_plants integer NOT NULL DEFAULT 0,
    failed_plants integer NOT NULL DEFAULT 0,      -- failed attempts (retries count)
    successful_works integer NOT NULL DEFAULT 0,
    failed_works integer NOT NULL DEFAULT 0,
    successful_harvests integer NOT NULL DEFAULT 0,
    failed_harvests integer NOT NULL DEFAULT 0,
    total_staked bigint NOT NULL DEFAULT 0,        -- sum of successful plants' stake
    total_rewards bigint NOT NULL DEFAULT 0,       -- sum of successful harvests' reward
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT block_operations_pooler_block_key UNIQUE (pooler_id, block_index),
    CONSTRAINT block_operations_block_index_range CHECK (block_index BETWEEN 0 AND 4294967295)
);

CREATE INDEX block_operations_block ON block_operations (block_index);

CREATE TRIGGER block_operations_derived BEFORE INSERT OR UPDATE ON block_operations
    FOR EACH ROW EXECUTE FUNCTION guard_derived_columns(
        'total_farmers', 'successful_plants', 'failed_plants', 'successful_works', 'failed_works',
        'successful_harvests', 'failed_harvests', 'total_staked', 'total_rewards');
CREATE TRIGGER block_operations_immutable BEFORE UPDATE ON block_operations
    FOR EACH ROW EXECUTE FUNCTION guard_immutable_columns('id', 'pooler_id', 'block_index', 'created_at');
CREATE TRIGGER block_operations_updated_at BEFORE UPDATE ON block_operations
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
-- The record of a block is kept for good.
CREATE TRIGGER block_operations_no_delete BEFORE DELETE ON block_operations
    FOR EACH ROW EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER block_operations_no_truncate BEFORE TRUNCATE ON block_operations
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_truncate();

-- Each event adds itself to its (pooler, block) totals, creating the row when
-- the pool service has not. The upsert takes the row lock first; under READ
-- COMMITTED the distinct-farmer test after it then sees every planting of any
-- transaction that got the lock before us, so total_farmers stays exact.
-- (Under REPEATABLE READ a concurrent writer gets a serialization failure and
-- retries instead.)
CREATE FUNCTION plantings_apply_to_block() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ok integer := (NEW.status = 'success')::integer;
BEGIN
    INSERT INTO block_operations AS b (pooler_id, block_index, successful_plants, failed_plants, total_staked)
    VALUES (NEW.pooler_id, NEW.block_index, ok, 1 - ok, ok * NEW.stake_amount)
    ON CONFLICT (pooler_id, block_index) DO UPDATE SET
        successful_plants = b.successful_plants + EXCLUDED.successful_plants,
        failed_plants = b.failed_plants + EXCLUDED.failed_plants,
        total_staked = b.total_staked + EXCLUDED.total_staked;
    IF NOT EXISTS (
        SELECT 1 FROM plantings p
        WHERE p.farmer_id = NEW.farmer_id AND p.block_index = NEW.block_index
          AND p.pooler_id = NEW.pooler_id AND p.id <> NEW.id
    ) THEN
        UPDATE block_operations SET total_farmers = total_farmers + 1
        WHERE pooler_id = NEW.pooler_id AND block_index = NEW.block_index;
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION works_apply_to_block() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ok integer := (NEW.status = 'success')::integer;
BEGIN
    INSERT INTO block_operations AS b (pooler_id, block_index, successful_works, failed_works)
    VALUES (NEW.pooler_id, NEW.block_index, ok, 1 - ok)
    ON CONFLICT (pooler_id, block_index) DO UPDATE SET
        successful_works = b.successful_works + EXCLUDED.successful_works,
        failed_works = b.failed_works + EXCLUDED.failed_works;
    RETURN NULL;
END;
$$;

CREATE FUNCTION harvests_apply_to_block() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ok integer := (NEW.status = 'success')::integer;
BEGIN
    INSERT INTO block_operations AS b (pooler_id, block_index, successful_harvests, failed_harvests, total_rewards)
    VALUES (NEW.pooler_id, NEW.block_index, ok, 1 - ok, ok * coalesce(NEW.reward_amount, 0))
    ON CONFLICT (pooler_id, block_index) DO UPDATE SET
        successful_harvests = b.successful_harvests + EXCLUDED.successful_harvests,
        failed_harvests = b.failed_harvests + EXCLUDED.failed_harvests,
        total_rewards = b.total_rewards + EXCLUDED.total_rewards;
    RETURN NULL;
END;
$$;

CREATE TRIGGER plantings_block_totals AFTER INSERT ON plantings
    FOR EACH ROW EXECUTE FUNCTION plantings_apply_to_block();
CREATE TRIGGER works_block_totals AFTER INSERT ON works
    FOR EACH ROW EXECUTE FUNCTION works_apply_to_block();
CREATE TRIGGER harvests_block_totals AFTER INSERT ON harvests
    FOR EACH ROW EXECUTE FUNCTION harvests_apply_to_block();
