-- A ledger entry kind for KALE that reached a custodial account from outside.
--
-- On its own: a value added to an enum cannot be used in the transaction that
-- adds it, and every migration file runs in one transaction (0010 uses it).
ALTER TYPE ledger_kind ADD VALUE IF NOT EXISTS 'deposit';
