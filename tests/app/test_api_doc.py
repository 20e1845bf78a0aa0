"""The grpcurl examples of docs/api.md, sent to a real pool: every request body parses
into its RPC's request message (grpcurl's JSON mapping is protobuf's), and each call is
answered as the page says: the flow from a new pooler to a payout works, and the calls
about a block that does not exist get the pool's own refusal, never INVALID_ARGUMENT."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from kalepool.chain import read_account
from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2, wallet_pb2
from tests.pool.conftest import PoolStage, until

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
MODULES = {"PoolService": pool_pb2, "PoolerService": pooler_pb2, "WalletService": wallet_pb2}


@dataclass
class Example:
    body: str  # the -d argument, shell quoting undone, variables left as $NAME
    service: str
    method: str
    as_pooler: bool
    friendbot: str = ""  # a `curl .../friendbot?addr=$NAME` line instead: the variable


def examples() -> list[Example]:
    """Every `grpcurl ... -d BODY ... kalepool.v1.Service/Method` of the page, and every
    call to the devnet's friendbot, in order."""
    lines = API_DOC.read_text().replace("\\\n", " ").splitlines()
    found = []
    while lines:
        line = lines.pop(0)
        funded = re.match(r'curl -s "\$\{RPC%/\}/friendbot\?addr=\$(\w+)"', line)
        if funded:
            found.append(Example("", "", "", False, friendbot=funded.group(1)))
            continue
        if not line.startswith("grpcurl ") or " -d " not in line:
            continue
        while True:
            try:
                words = shlex.split(line, comments=True)
                break
            except ValueError:  # a quoted body going on over the next lines
                line += "\n" + lines.pop(0)
        body = words[words.index("-d") + 1]
        target = next(w for w in words if w.startswith("kalepool.v1."))
        service, method = target.removeprefix("kalepool.v1.").split("/")
        found.append(Example(body, service, method, "$PTLS" in words))
    return found


def test_the_page_has_the_flow() -> None:
    # The flow is the pool's; the wallet's example (the pool's own calls) stands apart.
    flow = [e for e in examples() if e.service != "WalletService"]
    methods = [e.method or f"friendbot {e.friendbot}" for e in flow]
    assert methods[:5] == [
        "friendbot PK",
        "RegisterPooler",
        "RegisterFarmer",
        "friendbot ADDR",
        "ConfirmFunding",
    ]
    assert {"RequestPayout", "LeavePool", "Heartbeat", "StreamAssignments"} <= set(methods)
    # A pooler's calls come after its certificate is registered.
    assert methods.index("AddPoolerCertificate") < methods.index("Heartbeat")


async def test_the_examples_work_against_a_real_pool(pool: PoolStage) -> None:
    values: dict[str, str] = {
        "PK": re.search(r"^PK=(G[A-Z2-7]{55})$", API_DOC.read_text(), re.M).group(1)  # type: ignore[union-attr]
    }
    # The pooler's certificate, as the page reads it from $D/certs/rig-1.pem.
    values["CERT"] = json.dumps(pool.pki.client("rig-1").cert_pem.decode())
    op = pool.operator()
    api_key = ""
    answered: dict[str, grpc.StatusCode] = {}
    details: dict[str, str] = {}
    for example in examples():
        if example.friendbot:
            await _friendbot(pool, values[example.friendbot])
            continue
        body = re.sub(r"\$(\w+)", lambda m: values[m.group(1)], example.body)
        request: Message = getattr(MODULES[example.service], f"{example.method}Request")()
        json_format.Parse(body, request)  # grpcurl would refuse a body that does not parse
        if example.method == "StreamAssignments":
            continue  # a stream that never ends: parsing is what the page promises
        if example.service == "WalletService":
            continue  # the pool's own calls, shown with placeholders: parsing, likewise
        if example.as_pooler:
            stub = pool.pooler("rig-1")
            call = getattr(stub, example.method)(
                request, metadata=(("authorization", f"Bearer {api_key}"),)
            )
        else:
            call = getattr(op, example.method)(request)
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            answered[example.method] = error.code()
            details[example.method] = error.details() or ""
            continue
        answered[example.method] = grpc.StatusCode.OK
        got = json.loads(json_format.MessageToJson(response))  # as grpcurl prints it
        if example.method == "RegisterPooler":
            values["POOLER"] = got["pooler"]["poolerId"]
            api_key = got["apiKey"]
        elif example.method == "RegisterFarmer":
            values["FARMER"] = got["farmer"]["farmerId"]
            values["ADDR"] = got["custodialAddress"]
        elif example.method == "ConfirmFunding":
            assert got["funded"] is True and got["farmer"]["status"] == "FARMER_STATUS_ACTIVE"

    ok = grpc.StatusCode.OK
    refused = {m: (c, details[m]) for m, c in answered.items() if c is not ok}
    assert refused == {
        "GetBlock": (grpc.StatusCode.NOT_FOUND, "the pool took no part in block 12"),
        "RequestPayout": (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"farmer {values['FARMER']} has no balance to pay out",
        ),
        "RequestPlant": (
            grpc.StatusCode.FAILED_PRECONDITION,
            "block 12 cannot be planted now: the block to plant is 0"
            " (the farm's current block is 0)",
        ),
        "GetAssignments": (grpc.StatusCode.NOT_FOUND, "this pooler has no record of block 12"),
    }
    assert answered["LeavePool"] is ok and answered["Heartbeat"] is ok
    got = await op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=values["FARMER"]))
    assert got.farmer.status == common_pb2.FARMER_STATUS_DEPARTED


async def _friendbot(pool: PoolStage, address: str) -> None:
    """What the page's curl to the devnet's friendbot does."""
    await pool.stage.friendbot(address)

    async def funded() -> bool:
        return await read_account(pool.chain, address) is not None

    await until(funded)
