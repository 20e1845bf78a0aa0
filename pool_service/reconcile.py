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
import contextlib
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
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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

    def start(self, interval_seconds: float) -> None:
        """Reconcile at once, then every `interval_seconds`, in the background."""
        self._task = asyncio.create_task(self._run(interval_seconds), name="pool-plants-reconcile")

    async def stop(self) -> None:
        """End the background passes and wait for the current one to end."""
        # The flag as well as the cancellation: Python 3.11's wait_for (under psycopg's
        # pool) can swallow a cancellation, and the loop must end all the same.
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, interval_seconds: float) -> None:
        while not self._stopping.is_set():
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database or the wallet is down: next pass
                log.warning("plant reconciliation failed, retrying: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval_seconds)
