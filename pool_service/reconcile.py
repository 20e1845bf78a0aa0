"""The plant reconciler: every plant request the pool wrote down is driven until its
outcome is recorded, whatever crashed in between.

A `plant_requests` row is written before `WalletService.Plant` is called and settled in
the database transaction that records the outcome. One left unsettled (the pool stopped
mid-call, the wallet was unreachable, the transaction was still pending, a success whose
own request is not recorded yet) is driven again here, at start-up and then every
`plant_reconcile_interval_seconds`: the same idempotency key and stake go to the wallet,
which replays the transaction it already made (reconciling it with the chain by hash) and
never signs twice; a key it never signed, for a block that is over, is refused and
recorded as the pool's failure. Replicas may all run it: the request's row lock, the
pooler's advisory lock and `plantings_one_success` record each outcome once.
"""

from __future__ import annotations

import asyncio
import logging

from pool_service.planting import Planter
from pool_service.store import Store

log = logging.getLogger("pool_service")


class PlantReconciler:
    """Drives unsettled plant requests through a Planter."""

    def __init__(self, store: Store, planter: Planter, batch: int = 500) -> None:
        self.store = store
        self.planter = planter
        self.batch = batch

    async def reconcile(self) -> int:
        """One pass over the unsettled requests; how many it settled."""
        requests = [
            r
            for r in await self.store.unsettled_plant_requests(self.batch)
            if r.id not in self.planter.driving  # a call of this process is asking already
        ]
        if not requests:
            return 0
        results = await asyncio.gather(
            *(self.planter.drive(r, late=True) for r in requests), return_exceptions=True
        )
        settled = 0
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                log.warning("plant request %s not driven: %s", request.idempotency_key, result)
            elif result is not None:
                settled += 1
        if settled:
            log.info("plant reconciliation: %d of %d requests settled", settled, len(requests))
        return settled
