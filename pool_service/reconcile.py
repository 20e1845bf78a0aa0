"""The plant reconciler: every plant request the pool wrote down is driven until its
outcome is recorded, whatever crashed in between.

A `plant_requests` row is written before `WalletService.Plant` is called and settled in
the database transaction that records the outcome. One left unsettled (the pool stopped
mid-call, the wallet was unreachable, the transaction was still pending, a success whose
own request is not recorded yet) is driven again here, at start-up and then every
`plant_reconcile_interval_seconds`: the same idempotency key and stake go to the wallet,
which replays the transaction it already made (reconciling it with the chain by hash) and
never signs twice; a key it never signed, for a block that is over, is refused and
recorded as the pool's failure.

It never competes with the plants of the current block: it takes only requests older
than the plant deadline (`plant_timeout_seconds`; a call still asking about one has
given up by then), at most `batch` a pass, oldest-attempted first, and asks the wallet
about at most `concurrency` at once (a quarter of `plant_concurrency`), beside and not
through the RequestPlant calls' own limit. Each pass that takes a request counts an
attempt, and one that stays pending waits twice as long before the next (up to
`LONGEST_WAIT_DEADLINES` plant deadlines), so a few stuck requests never starve the rest.
While the contract watch holds plants (`pool_service.contract_watch`: the farm's code
changed, or it is paused) a pass sends nothing new: it asks the wallet about each request
by its key first (`GetTransaction`) and drives only those the wallet already signed, which
are followed to their outcome as always; the others wait, unsettled, for the hold to end.
Replicas may all run it: taking a request is one statement that skips rows another holds
and moves the taken ones to the back; the request's row lock, the pooler's advisory lock
and `plantings_one_success` record each outcome once.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from kalepool.v1 import wallet_pb2
from pool_service.books.plantings import PlantingStore, PlantRequestRow
from pool_service.planting import Planter

log = logging.getLogger("pool_service")

# The longest wait between two attempts of a request that stays pending, in plant
# deadlines (30 s by default: five minutes, about a block).
LONGEST_WAIT_DEADLINES = 10


class PlantReconciler:
    """Drives unsettled plant requests through a Planter."""

    def __init__(
        self,
        plantings: PlantingStore,
        planter: Planter,
        batch: int = 64,
        concurrency: int | None = None,
    ) -> None:
        self.plantings = plantings
        self.planter = planter
        self.batch = batch
        settings = planter.settings
        self.concurrency = concurrency or max(1, settings.plant_concurrency // 4)
        self._limit = asyncio.Semaphore(self.concurrency)

    async def reconcile(self) -> int:
        """One pass over the unsettled requests due now; how many it settled."""
        deadline = self.planter.settings.plant_timeout_seconds
        requests = await self.plantings.take_unsettled_plant_requests(
            self.batch,
            deadline,
            deadline * LONGEST_WAIT_DEADLINES,
            busy=sorted(self.planter.driving),  # a call of this process is asking already
        )
        if not requests:
            return 0
        watch = self.planter.watch
        if watch is not None and not await watch.plants_allowed():
            signed = await asyncio.gather(*(self._signed(r) for r in requests))
            held = [r for r, s in zip(requests, signed, strict=True) if not s]
            if held:
                log.info(
                    "plant reconciliation: %d unsent plant requests held by the contract"
                    " watch (%s, ...)",
                    len(held),
                    held[0].idempotency_key,
                )
            requests = [r for r, s in zip(requests, signed, strict=True) if s]
            if not requests:
                return 0
        results = await asyncio.gather(
            *(self.planter.drive(r, self._limit) for r in requests), return_exceptions=True
        )
        settled = 0
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                log.warning("plant request %s not driven: %s", request.idempotency_key, result)
            elif result is not None:
                settled += 1
            else:
                log.warning(
                    "plant request %s still pending after %d attempts: asked again later",
                    request.idempotency_key,
                    request.attempts,
                )
        log.info("plant reconciliation: %d of %d requests settled", settled, len(requests))
        return settled

    async def _signed(self, request: PlantRequestRow) -> bool:
        """Whether the wallet already holds a transaction under the request's key (then
        it is followed, never abandoned); False when it holds none or cannot say."""
        try:
            await self.planter.wallet.stub.GetTransaction(
                wallet_pb2.GetTransactionRequest(idempotency_key=request.idempotency_key),
                timeout=self.planter.settings.plant_timeout_seconds,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                log.warning(
                    "plant request %s: the wallet cannot say whether it was signed (%s):"
                    " held while the contract watch holds plants",
                    request.idempotency_key,
                    exc.code().name,
                )
            return False
        return True
