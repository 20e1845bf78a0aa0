-- The wallet's own payout policy: where a custodial account may pay, how that changes,
-- and every refused attempt.
--
-- wallet.custodial_wallets.payout_address
--                          the one address Transfer and CloseWallet may pay: given to
--                          CreateWallet, changed only through a signed challenge. NULL
--                          for a wallet the backfill below found no farmer for (such a
--                          wallet refuses every payout until an operator settles it).
-- wallet.payout_challenges one challenge per change asked for: the exact text the
--                          current payout address's key must sign (SEP-53), its nonce,
--                          its expiry; used once (used_at).
-- wallet.payout_address_changes
--                          append-only: every address a wallet was ever given after its
--                          creation, with the challenge and signature that proved it
--                          (or 'migration' for the backfill below).
-- wallet.payout_refusals   append-only: every payout or change the policy refused, who
--                          asked, what, and why (an attack leaves a trace here).
--
-- Backfill: a wallet made before this migration had no address of its own. The pool's
-- record (pool.farmers.payout_address of the farmer holding the wallet) is the address
-- its payouts went to until now, so it is copied once, here, by the owner, and the copy
-- is recorded as a change from 'migration'. From now on only the farmer's signature
-- changes it. A wallet without a farmer row (a registration that stopped half-way) keeps
-- NULL: it pays nothing.

ALTER TABLE wallet.custodial_wallets
    ADD COLUMN payout_address text,
    ADD CONSTRAINT custodial_wallets_payout_address_format CHECK (
        payout_address ~ '^[GC][A-Z2-7]{55}$' OR payout_address ~ '^M[A-Z2-7]{68}$'),
    ADD CONSTRAINT custodial_wallets_payout_not_self CHECK (payout_address <> public_key);

CREATE TABLE wallet.payout_challenges (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    wallet_id uuid NOT NULL REFERENCES wallet.custodial_wallets (id),
    -- the address whose key must sign: the wallet's payout address when issued
    signer_address text NOT NULL,
    new_address text NOT NULL,
    nonce text NOT NULL,
    -- the exact text signed (it names the wallet, both addresses, the nonce, the expiry)
    message text NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payout_challenges_nonce_key UNIQUE (nonce),
    CONSTRAINT payout_challenges_nonce_format CHECK (nonce ~ '^[0-9a-f]{32,128}$'),
    CONSTRAINT payout_challenges_new_address_format CHECK (new_address ~ '^G[A-Z2-7]{55}$'),
    CONSTRAINT payout_challenges_expiry CHECK (expires_at > created_at)
);
CREATE TRIGGER payout_challenges_immutable BEFORE UPDATE ON wallet.payout_challenges
    FOR EACH ROW EXECUTE FUNCTION shared.guard_immutable_columns(
        'id', 'wallet_id', 'signer_address', 'new_address', 'nonce', 'message', 'expires_at',
        'created_at');
CREATE TRIGGER payout_challenges_no_delete BEFORE DELETE ON wallet.payout_challenges
    FOR EACH ROW EXECUTE FUNCTION shared.refuse_mutation();

CREATE TABLE wallet.payout_address_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wallet_id uuid NOT NULL REFERENCES wallet.custodial_wallets (id),
    old_address text,
    new_address text NOT NULL,
    -- 'signed': a challenge signed by old_address's key; 'migration': the backfill
    source text NOT NULL CHECK (source IN ('signed', 'migration')),
    challenge_id uuid REFERENCES wallet.payout_challenges (id),
    signature bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payout_address_changes_proof CHECK (
        (source = 'signed') = (challenge_id IS NOT NULL AND signature IS NOT NULL)),
    CONSTRAINT payout_address_changes_one_per_challenge UNIQUE (challenge_id)
);
CREATE INDEX payout_address_changes_wallet ON wallet.payout_address_changes (wallet_id, id);
CREATE TRIGGER payout_address_changes_append_only
    BEFORE UPDATE OR DELETE ON wallet.payout_address_changes
    FOR EACH ROW EXECUTE FUNCTION shared.refuse_mutation();
CREATE TRIGGER payout_address_changes_no_truncate BEFORE TRUNCATE ON wallet.payout_address_changes
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_mutation();

CREATE TABLE wallet.payout_refusals (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the wallet asked about (NULL when the request named none the service holds)
    wallet_id uuid REFERENCES wallet.custodial_wallets (id),
    action text NOT NULL CHECK (action IN ('transfer', 'close', 'change_payout_address')),
    reason text NOT NULL CHECK (reason IN (
        'foreign_destination', 'no_payout_address', 'daily_amount', 'hourly_transfers',
        'challenge_unknown', 'challenge_wrong_wallet', 'challenge_expired', 'challenge_used',
        'challenge_address_mismatch', 'bad_signature')),
    destination text,
    amount bigint,
    idempotency_key text,
    challenge_id uuid,
    -- the client certificate's common name
    caller text,
    detail text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payout_refusals_wallet ON wallet.payout_refusals (wallet_id, created_at);
CREATE TRIGGER payout_refusals_append_only BEFORE UPDATE OR DELETE ON wallet.payout_refusals
    FOR EACH ROW EXECUTE FUNCTION shared.refuse_mutation();
CREATE TRIGGER payout_refusals_no_truncate BEFORE TRUNCATE ON wallet.payout_refusals
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_mutation();

-- A payout address changes only with its change recorded first (same database
-- transaction): the row's new address must be the latest change's.
CREATE FUNCTION wallet.custodial_wallets_payout_change_recorded() RETURNS trigger
LANGUAGE plpgsql SET search_path = wallet, shared AS $$
DECLARE
    latest record;
BEGIN
    IF NEW.payout_address IS NOT DISTINCT FROM OLD.payout_address THEN
        RETURN NEW;
    END IF;
    SELECT old_address, new_address INTO latest FROM payout_address_changes
        WHERE wallet_id = NEW.id ORDER BY id DESC LIMIT 1;
    IF NOT FOUND OR latest.new_address IS DISTINCT FROM NEW.payout_address
            OR latest.old_address IS DISTINCT FROM OLD.payout_address THEN
        RAISE EXCEPTION 'the payout address of wallet % changes only with its change recorded in payout_address_changes',
            NEW.public_key
            USING ERRCODE = 'check_violation', CONSTRAINT = 'custodial_wallets_payout_change_recorded';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER custodial_wallets_payout_change BEFORE UPDATE OF payout_address
    ON wallet.custodial_wallets
    FOR EACH ROW EXECUTE FUNCTION wallet.custodial_wallets_payout_change_recorded();

-- The per-wallet limits count a wallet's recent payouts.
CREATE INDEX transactions_payouts_by_source ON wallet.transactions (source_account, created_at)
    WHERE kind = 'payout';

-- Backfill (see the top).
INSERT INTO wallet.payout_address_changes (wallet_id, old_address, new_address, source)
    SELECT w.id, NULL, f.payout_address, 'migration'
    FROM wallet.custodial_wallets w
    JOIN pool.farmers f ON f.custodial_public_key = w.public_key
    ORDER BY w.created_at;
UPDATE wallet.custodial_wallets w SET payout_address = f.payout_address
    FROM pool.farmers f WHERE f.custodial_public_key = w.public_key;

INSERT INTO shared.role_grants (role, statement, added_by) VALUES
    -- the one column of the wallet row the policy changes (with its change recorded)
    ('kalepool_wallet',
     'GRANT UPDATE (payout_address) ON wallet.custodial_wallets TO kalepool_wallet', '0015'),
    ('kalepool_wallet',
     'GRANT SELECT, INSERT ON wallet.payout_challenges, wallet.payout_address_changes,'
     ' wallet.payout_refusals TO kalepool_wallet', '0015'),
    -- a challenge is spent once
    ('kalepool_wallet', 'GRANT UPDATE (used_at) ON wallet.payout_challenges TO kalepool_wallet',
     '0015'),
    ('kalepool_auditor',
     'GRANT SELECT (payout_address) ON wallet.custodial_wallets TO kalepool_auditor', '0015'),
    ('kalepool_auditor',
     'GRANT SELECT ON wallet.payout_challenges, wallet.payout_address_changes,'
     ' wallet.payout_refusals TO kalepool_auditor', '0015');
SELECT shared.grant_roles();
