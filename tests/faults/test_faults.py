"""The fast subset of the fault matrix, in the test suite: one farm (`kale-pool up` with
two poolers on 20-second blocks) struck by each quick scenario in turn. After each, a
block farms normally, the books agree with the chain, nothing is lost or applied twice.
The whole matrix runs with `make faults` (tests/faults/matrix.py, docs/reliability.md)."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.harness import Farm
from tests.faults.scenarios import SCENARIOS, Scenario, run_scenario

pytestmark = pytest.mark.slow

QUICK = [s for s in SCENARIOS if s.quick]
SEED = int(os.environ.get("KALE_POOL_FAULT_SEED", "7"))


@pytest.fixture(scope="module")
async def farm(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Farm]:
    farm = Farm(Path(tmp_path_factory.mktemp("faults")) / "data", poolers=2, farmers=4)
    await farm.start()
    try:
        yield farm
    finally:
        await farm.close()


@pytest.mark.parametrize("scenario", QUICK, ids=[s.phase for s in QUICK])
async def test_the_books_survive(farm: Farm, scenario: Scenario) -> None:
    outcome = await run_scenario(farm, scenario, random.Random(SEED))
    # The fault struck between the send and the record: something was caught unrecorded.
    assert int(outcome.caught.split()[0]) > 0, outcome.caught
    assert outcome.recovered > outcome.block
    assert outcome.data_lost == 0, outcome.notes
    assert outcome.applied_twice == 0, outcome.notes
    assert outcome.differences == 0, outcome.notes
