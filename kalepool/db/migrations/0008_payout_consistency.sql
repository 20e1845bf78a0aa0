-- The consistency check covers payouts too.
--
-- Inserts already refuse a mismatched or premature entry (0007); what only a look
-- across rows can prove is that every payout was debited exactly once and that a
-- failed payout was given its money back: a pool that crashed between marking a
-- payout failed and posting its reversal would otherwise hold a farmer's KALE
-- silently. check_consistency() reads these lines beside consistency_problems().

CREATE FUNCTION payout_problems() RETURNS SETOF text
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
$$;
