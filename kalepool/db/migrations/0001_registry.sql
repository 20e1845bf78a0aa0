-- Registry: poolers, their API keys and the farmers they serve, plus the
-- generic guard functions every later migration reuses.
--
-- Error codes raised by the guards (standard SQLSTATEs, so drivers map them to
-- their usual exception classes):
--   restrict_violation (23001)  append-only table changed, immutable column changed
--   generated_always   (428C9)  a derived column written directly
--   check_violation    (23514)  a rule spanning rows or transitions (named CONSTRAINT)

-- Generic guards -------------------------------------------------------------

-- Event tables are the audit trail: rows are only ever added.
CREATE FUNCTION refuse_mutation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is refused: the table is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation',
              HINT = 'Record a new row instead of changing or removing an old one.';
END;
$$;

-- TRUNCATE fires no row triggers, so on tables that feed derived state it would
-- silently leave counters and balances wrong.
CREATE FUNCTION refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE on % is refused: it would bypass the triggers that keep derived state', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END;
$$;

-- True while derived state may be written: inside another trigger (the
-- maintenance triggers below run nested, at depth > 1) or inside
-- rebuild_derived_state(), which sets a transaction-local flag.
CREATE FUNCTION in_derived_write() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT pg_trigger_depth() > 1
        OR coalesce(current_setting('kalepool.rebuilding_derived', true), '') = 'on'
$$;

-- Derived columns (balances, counters, totals) are maintained by triggers from
-- the events; application code may not write them, so it cannot get them wrong.
-- TG_ARGV names the derived columns. On INSERT they must be left at zero.
CREATE FUNCTION guard_derived_columns() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    col text;
    new_row jsonb;
    old_row jsonb;
BEGIN
    IF in_derived_write() THEN
        RETURN NEW;
    END IF;
    new_row := to_jsonb(NEW);
    IF TG_OP = 'UPDATE' THEN
        old_row := to_jsonb(OLD);
    END IF;
    FOREACH col IN ARRAY TG_ARGV LOOP
        IF (TG_OP = 'INSERT' AND (new_row ->> col)::numeric <> 0)
           OR (TG_OP = 'UPDATE' AND (new_row -> col) IS DISTINCT FROM (old_row -> col)) THEN
            RAISE EXCEPTION '%.% is derived from the event tables and maintained by triggers; it cannot be written directly',
                TG_TABLE_NAME, col
                USING ERRCODE = 'generated_always',
                      HINT = 'Insert the event instead; rebuild_derived_state() recomputes derived state.';
        END IF;
    END LOOP;
    RETURN NEW;
END;
$$;

-- Identity columns never change once written. TG_ARGV names them.
CREATE FUNCTION guard_immutable_columns() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    col text;
    new_row jsonb := to_jsonb(NEW);
    old_row jsonb := to_jsonb(OLD);
BEGIN
    FOREACH col IN ARRAY TG_ARGV LOOP
        IF (new_row -> col) IS DISTINCT FROM (old_row -> col) THEN
            RAISE EXCEPTION '%.% cannot change once written', TG_TABLE_NAME, col
                USING ERRCODE = 'restrict_violation';
        END IF;
    END LOOP;
    RETURN NEW;
END;
$$;

CREATE FUNCTION touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- A safety net under the wallet's encryption: a secret column must hold
-- ciphertext, never a Stellar secret seed or any other all-printable text.
-- Authenticated ciphertext of >= 48 random-looking bytes is all printable ASCII
-- with probability about (95/256)^48, i.e. never.
CREATE FUNCTION bytea_looks_like_plaintext(b bytea) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT encode(b, 'escape') ~ 'S[A-Z2-7]{55}'
        OR NOT EXISTS (
            SELECT 1 FROM generate_series(0, length(b) - 1) AS i
            WHERE get_byte(b, i) NOT BETWEEN 32 AND 126
        )
$$;

-- Poolers --------------------------------------------------------------------

CREATE TABLE poolers (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    public_key text NOT NULL,
    api_endpoint text,
    max_farmers integer NOT NULL,
    -- derived: number of farmers with status 'active' (trigger on farmers)
    current_farmers integer NOT NULL DEFAULT 0,
    is_active boolean NOT NULL DEFAULT true,
    last_seen_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT poolers_public_key_key UNIQUE (public_key),
    CONSTRAINT poolers_name_length CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    CONSTRAINT poolers_public_key_format CHECK (public_key ~ '^G[A-Z2-7]{55}$'),
    CONSTRAINT poolers_max_farmers_positive CHECK (max_farmers > 0),
    -- Capacity is enforced here, under the pooler row lock the farmer trigger
    -- takes, so concurrent registrations cannot overfill a pooler.
    CONSTRAINT poolers_capacity CHECK (current_farmers >= 0 AND current_farmers <= max_farmers)
);

CREATE TRIGGER poolers_derived BEFORE INSERT OR UPDATE ON poolers
    FOR EACH ROW EXECUTE FUNCTION guard_derived_columns('current_farmers');
CREATE TRIGGER poolers_immutable BEFORE UPDATE ON poolers
    FOR EACH ROW EXECUTE FUNCTION guard_immutable_columns('id', 'created_at');
CREATE TRIGGER poolers_updated_at BEFORE UPDATE ON poolers
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- API keys are random 256-bit tokens; only their SHA-256 is stored. A fast hash
-- is right for high-entropy tokens (nothing to brute-force) and lets the key
-- itself be the lookup. Separate rows allow rotation and revocation.
CREATE TABLE pooler_api_keys (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    pooler_id uuid NOT NULL REFERENCES poolers (id),
    key_hash bytea NOT NULL,
    -- a short public prefix of the key, so an operator can tell keys apart
    key_prefix text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz,
    CONSTRAINT pooler_api_keys_key_hash_key UNIQUE (key_hash),
    CONSTRAINT pooler_api_keys_key_hash_length CHECK (octet_length(key_hash) = 32),
    CONSTRAINT pooler_api_keys_key_prefix_format CHECK (key_prefix ~ '^[A-Za-z0-9_-]{4,16}$')
);

CREATE INDEX pooler_api_keys_pooler ON pooler_api_keys (pooler_id);
CREATE TRIGGER pooler_api_keys_immutable BEFORE UPDATE ON pooler_api_keys
    FOR EACH ROW EXECUTE FUNCTION guard_immutable_columns('id', 'pooler_id', 'key_hash', 'key_prefix', 'created_at');

-- Farmers --------------------------------------------------------------------

CREATE TYPE farmer_status AS ENUM ('active', 'leaving', 'departed');

CREATE TABLE farmers (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    pooler_id uuid NOT NULL REFERENCES poolers (id),
    custodial_public_key text NOT NULL,
    -- The custodial secret, encrypted by wallet_service (authenticated
    -- encryption, bound to custodial_public_key). Never plaintext.
    secret_ciphertext bytea NOT NULL,
    secret_nonce bytea NOT NULL,
    key_id text NOT NULL,
    key_version integer NOT NULL,
    payout_address text NOT NULL,
    -- share of the KALE balance to stake, in basis points (10000 = 100 %)
    stake_bps integer NOT NULL,
    -- derived: sum of balance_ledger.amount for this farmer (trigger)
    current_balance bigint NOT NULL DEFAULT 0,
    is_funded boolean NOT NULL DEFAULT false,
    status farmer_status NOT NULL DEFAULT 'active',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT farmers_custodial_public_key_key UNIQUE (custodial_public_key),
    CONSTRAINT farmers_custodial_public_key_format CHECK (custodial_public_key ~ '^G[A-Z2-7]{55}$'),
    CONSTRAINT farmers_payout_address_format
        CHECK (payout_address ~ '^[GC][A-Z2-7]{55}$' OR payout_address ~ '^M[A-Z2-7]{68}$'),
    CONSTRAINT farmers_payout_not_custodial CHECK (payout_address <> custodial_public_key),
    CONSTRAINT farmers_stake_bps_range CHECK (stake_bps BETWEEN 0 AND 10000),
    -- 12 bytes: AES-GCM / ChaCha20-Poly1305; 24 bytes: XChaCha20-Poly1305
    CONSTRAINT farmers_secret_nonce_length CHECK (octet_length(secret_nonce) IN (12, 24)),
    -- a 32-byte seed plus a 16-byte tag at least; anything shorter is not ciphertext
    CONSTRAINT farmers_secret_ciphertext_length CHECK (octet_length(secret_ciphertext) BETWEEN 48 AND 1024),
    CONSTRAINT farmers_secret_not_plaintext CHECK (NOT bytea_looks_like_plaintext(secret_ciphertext)),
    CONSTRAINT farmers_key_id_format CHECK (key_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    CONSTRAINT farmers_key_version_positive CHECK (key_version >= 1),
    -- Reusing a nonce under one key breaks AES-GCM; the database refuses it.
    CONSTRAINT farmers_secret_nonce_unique UNIQUE (key_id, key_version, secret_nonce)
);

CREATE INDEX farmers_pooler_status ON farmers (pooler_id, status);

CREATE TRIGGER farmers_derived BEFORE INSERT OR UPDATE ON farmers
    FOR EACH ROW EXECUTE FUNCTION guard_derived_columns('current_balance');
-- The ciphertext is bound to the public key, so the key can never change.
CREATE TRIGGER farmers_immutable BEFORE UPDATE ON farmers
    FOR EACH ROW EXECUTE FUNCTION guard_immutable_columns('id', 'custodial_public_key', 'created_at');
CREATE TRIGGER farmers_updated_at BEFORE UPDATE ON farmers
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- A departed farmer has been paid out and its wallet retired: final.
CREATE FUNCTION farmers_check_status_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'departed' AND NEW.status <> 'departed' THEN
        RAISE EXCEPTION 'farmer % has departed; its status is final', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'farmers_status_transition';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER farmers_status_transition BEFORE UPDATE OF status ON farmers
    FOR EACH ROW EXECUTE FUNCTION farmers_check_status_transition();

-- poolers.current_farmers follows every insert, move, status change and delete
-- of a farmer. The pooler row update takes the row lock, so concurrent changes
-- serialise and the capacity check above sees the true count.
CREATE FUNCTION farmers_count_in_pooler() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND OLD.pooler_id = NEW.pooler_id
       AND (OLD.status = 'active') = (NEW.status = 'active') THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'active' THEN
        UPDATE poolers SET current_farmers = current_farmers - 1 WHERE id = OLD.pooler_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'active' THEN
        UPDATE poolers SET current_farmers = current_farmers + 1 WHERE id = NEW.pooler_id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER farmers_current_farmers AFTER INSERT OR UPDATE OF pooler_id, status OR DELETE ON farmers
    FOR EACH ROW EXECUTE FUNCTION farmers_count_in_pooler();
CREATE TRIGGER farmers_no_truncate BEFORE TRUNCATE ON farmers
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_truncate();
