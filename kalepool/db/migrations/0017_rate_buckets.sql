-- Rate limits shared by every replica of a service: one token bucket per (kind, subject)
-- row, refilled and taken from by a single atomic UPSERT (kalepool/limits.py), so two
-- replicas behind one address count one caller together instead of each allowing it in
-- full. A table per service, in its own schema: each service's role touches only its own.
--
--   kind        what is limited: 'pooler' (PoolerService calls of one pooler),
--               'failed_auth' (refused PoolerService attempts of one certificate),
--               'operator' (PoolService calls of one operator certificate), 'wallet_caller'
--               (WalletService calls of one caller certificate)
--   subject     whom: a pooler id or a certificate's common name
--   tokens      calls left at updated_at (a fraction refills continuously)
--   updated_at  when tokens was last computed (never moves backwards)
--   allowed     whether the last take found a whole token (what the UPSERT returns)
--
-- The rows are counters, not records: nothing reads them but the limiter, and a lost
-- row only means a full bucket.

CREATE TABLE pool.rate_buckets (
    kind        text NOT NULL CHECK (length(kind) BETWEEN 1 AND 32),
    subject     text NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    tokens      double precision NOT NULL,
    updated_at  timestamptz NOT NULL,
    allowed     boolean NOT NULL,
    PRIMARY KEY (kind, subject)
);

CREATE TABLE wallet.rate_buckets (LIKE pool.rate_buckets INCLUDING ALL);

INSERT INTO shared.role_grants (role, statement, added_by) VALUES
    ('kalepool_pool', 'GRANT SELECT, INSERT, UPDATE ON pool.rate_buckets TO kalepool_pool',
     '0017'),
    ('kalepool_wallet',
     'GRANT SELECT, INSERT, UPDATE ON wallet.rate_buckets TO kalepool_wallet', '0017');
SELECT shared.grant_roles();
