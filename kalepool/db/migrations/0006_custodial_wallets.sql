-- Custodial wallets: the wallet service's own table of encrypted keys.
--
-- A wallet is created for an owner (a farmer id) before the farmer row exists
-- (registration asks for the address to fund first), and only the wallet
-- service may ever read a secret, so the encrypted keys leave `farmers` for a
-- table of their own. Farmers keep `custodial_public_key`, the link.

CREATE TABLE custodial_wallets (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- who the wallet was made for (a farmer id); one wallet per owner
    owner_id uuid NOT NULL,
    public_key text NOT NULL,
    -- AES-256-GCM of the 32-byte ed25519 seed under the master key named by
    -- (key_id, key_version), with the public key as associated data: the
    -- ciphertext decrypts only as this account's key.
    ciphertext bytea NOT NULL,
    nonce bytea NOT NULL,
    key_id text NOT NULL,
    key_version integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- set once the account was merged away (CloseWallet); the row stays as history
    closed_at timestamptz,
    CONSTRAINT custodial_wallets_owner_id_key UNIQUE (owner_id),
    CONSTRAINT custodial_wallets_public_key_key UNIQUE (public_key),
    CONSTRAINT custodial_wallets_public_key_format CHECK (public_key ~ '^G[A-Z2-7]{55}$'),
    -- 12 bytes: AES-GCM / ChaCha20-Poly1305; 24 bytes: XChaCha20-Poly1305
    CONSTRAINT custodial_wallets_nonce_length CHECK (octet_length(nonce) IN (12, 24)),
    -- a 32-byte seed plus a 16-byte tag at least; anything shorter is not ciphertext
    CONSTRAINT custodial_wallets_ciphertext_length CHECK (octet_length(ciphertext) BETWEEN 48 AND 1024),
    CONSTRAINT custodial_wallets_not_plaintext CHECK (NOT bytea_looks_like_plaintext(ciphertext)),
    CONSTRAINT custodial_wallets_key_id_format CHECK (key_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    CONSTRAINT custodial_wallets_key_version_positive CHECK (key_version >= 1),
    -- Reusing a nonce under one key breaks AES-GCM; the database refuses it.
    CONSTRAINT custodial_wallets_nonce_unique UNIQUE (key_id, key_version, nonce)
);

-- The ciphertext is bound to the public key, so the key and owner never change;
-- rotation rewrites ciphertext, nonce, key_id and key_version together.
CREATE TRIGGER custodial_wallets_immutable BEFORE UPDATE ON custodial_wallets
    FOR EACH ROW EXECUTE FUNCTION guard_immutable_columns('id', 'owner_id', 'public_key', 'created_at');
CREATE TRIGGER custodial_wallets_updated_at BEFORE UPDATE ON custodial_wallets
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
-- A key is never thrown away: its account may still hold funds or history.
CREATE TRIGGER custodial_wallets_no_delete BEFORE DELETE ON custodial_wallets
    FOR EACH ROW EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER custodial_wallets_no_truncate BEFORE TRUNCATE ON custodial_wallets
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_mutation();

-- Farmers keep the public key only (their constraints on these columns go with them).
ALTER TABLE farmers
    DROP COLUMN secret_ciphertext,
    DROP COLUMN secret_nonce,
    DROP COLUMN key_id,
    DROP COLUMN key_version;

-- Transactions: what the wallet service needs to answer a retry exactly.

-- A digest of the request's parameters: the same idempotency key with other
-- parameters is refused, not served with another request's outcome.
ALTER TABLE transactions ADD COLUMN request_digest bytea
    CONSTRAINT transactions_request_digest_length CHECK (octet_length(request_digest) = 32);
-- Refused on its first send (never queued, no fee): settled as 'failed', and
-- it does not hold its idempotency key, so a retry may sign afresh.
ALTER TABLE transactions ADD COLUMN rejected boolean NOT NULL DEFAULT false;
ALTER TABLE transactions ADD CONSTRAINT transactions_rejected_is_failed
    CHECK (NOT rejected OR status = 'failed');
-- The outcome as the chain reported it.
ALTER TABLE transactions ADD COLUMN fee_charged bigint
    CONSTRAINT transactions_fee_charged_range CHECK (fee_charged >= 0);
-- the contract call's return value (harvest: the reward, stake excluded); i128 on chain
ALTER TABLE transactions ADD COLUMN return_value numeric(39, 0);
ALTER TABLE transactions ADD COLUMN contract_error integer
    CONSTRAINT transactions_contract_error_range CHECK (contract_error > 0);
ALTER TABLE transactions ADD COLUMN fault fault_party;
ALTER TABLE transactions ADD COLUMN settled_at timestamptz;

-- The digest is part of what was signed for.
DROP TRIGGER transactions_immutable ON transactions;
CREATE TRIGGER transactions_immutable BEFORE UPDATE ON transactions
    FOR EACH ROW EXECUTE FUNCTION guard_immutable_columns(
        'id', 'idempotency_key', 'kind', 'farmer_id', 'block_index', 'source_account',
        'sequence_number', 'min_time', 'max_time', 'amount', 'envelope_xdr', 'tx_hash',
        'created_at', 'request_digest');

-- One live transaction per idempotency key; rejected attempts step aside.
ALTER TABLE transactions DROP CONSTRAINT transactions_idempotency_key_key;
CREATE UNIQUE INDEX transactions_idempotency_key_key ON transactions (idempotency_key)
    WHERE NOT rejected;
CREATE INDEX transactions_idempotency_key_all ON transactions (idempotency_key, created_at);

-- The wallet service signs for wallets, which exist before (and after) their
-- farmer row: the farmer is linked when a farmer holds the key, not required.
ALTER TABLE transactions DROP CONSTRAINT transactions_farm_call_shape;
ALTER TABLE transactions ADD CONSTRAINT transactions_farm_call_shape
    CHECK (kind NOT IN ('plant', 'harvest') OR block_index IS NOT NULL);
ALTER TABLE transactions DROP CONSTRAINT transactions_payout_shape;
ALTER TABLE transactions ADD CONSTRAINT transactions_payout_shape
    CHECK (kind <> 'payout' OR amount IS NOT NULL);
