-- Farmer actions: the nonces of the signed action messages the pool has taken.
--
-- pool.action_nonces  one row per farmer action message (kalepool/farmer_actions.py) the
--                     pool accepted, append-only:
--                     nonce           the message's nonce (32 lowercase hex digits): a
--                                     signed action is taken once, never replayed
--                     action          'join', 'payout' or 'leave'
--                     payout_address  the account whose key signed it
--                     farmer_id       the farmer it concerns (NULL for a join: the
--                                     farmer does not exist yet)
--                     expires_at      the message's expiry
--                     used_at         when the pool took it
--
-- The farmers' web page forwards a join, payout or leave only with the farmer's
-- signature of such a message (PoolService FarmerSignature); the pool verifies it and
-- inserts the nonce before acting, so a second use of the same signature finds the row
-- (the primary key) and is refused.

CREATE TABLE pool.action_nonces (
    nonce          text PRIMARY KEY CHECK (nonce ~ '^[0-9a-f]{32}$'),
    action         text NOT NULL CHECK (action IN ('join', 'payout', 'leave')),
    payout_address text NOT NULL CHECK (payout_address ~ '^G[A-Z2-7]{55}$'),
    farmer_id      uuid REFERENCES pool.farmers (id),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT action_nonces_farmer CHECK ((action = 'join') = (farmer_id IS NULL))
);

CREATE TRIGGER action_nonces_append_only BEFORE UPDATE OR DELETE ON pool.action_nonces
    FOR EACH ROW EXECUTE FUNCTION shared.refuse_mutation();
CREATE TRIGGER action_nonces_no_truncate BEFORE TRUNCATE ON pool.action_nonces
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_mutation();

-- The pool reads and appends; the auditor's SELECT ON ALL TABLES IN SCHEMA pool covers
-- the new table when grant_roles() runs again below.
INSERT INTO shared.role_grants (role, statement, added_by) VALUES
    ('kalepool_pool', 'GRANT SELECT, INSERT ON pool.action_nonces TO kalepool_pool', '0023');

SELECT shared.grant_roles();
