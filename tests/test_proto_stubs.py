"""The wire contracts: generated code is fresh, and proto/ keeps the package's conventions.

The conventions are checked on descriptors compiled from proto/ with their
source info (comments), so a contract change that breaks one fails here.
"""

from __future__ import annotations

import importlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from kalepool import protogen

FDP = descriptor_pb2.FieldDescriptorProto
SERVICES = {
    "WalletService": "kalepool.v1.wallet_pb2",
    "PoolService": "kalepool.v1.pool_pb2",
    "PoolerService": "kalepool.v1.pooler_pb2",
}
# Field numbers of the descriptor messages, for source_code_info paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE, SERVICE_METHOD = 2, 2

Path_ = tuple[int, ...]


@pytest.fixture(scope="module")
def contracts() -> descriptor_pb2.FileDescriptorSet:
    """proto/ compiled with comments; only our own files, not the imported well-known types."""
    compiled = protogen.descriptor_set(include_source_info=True)
    own = descriptor_pb2.FileDescriptorSet()
    own.file.extend(f for f in compiled.file if f.name.startswith("kalepool/"))
    return own


def comments(file: descriptor_pb2.FileDescriptorProto) -> dict[Path_, str]:
    """Leading (else trailing) comment of each element, by source path."""
    found: dict[Path_, str] = {}
    for location in file.source_code_info.location:
        text = (location.leading_comments or location.trailing_comments).strip()
        if text:
            found[tuple(location.path)] = text
    return found


def elements(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[str, Path_]]:
    """Every service, method, message, field, oneof, enum and enum value, with its path."""

    def enum(
        e: descriptor_pb2.EnumDescriptorProto, prefix: str, path: Path_
    ) -> Iterator[tuple[str, Path_]]:
        yield f"enum {prefix}{e.name}", path
        for i, value in enumerate(e.value):
            yield f"enum value {prefix}{e.name}.{value.name}", (*path, ENUM_VALUE, i)

    def message(
        m: descriptor_pb2.DescriptorProto, prefix: str, path: Path_
    ) -> Iterator[tuple[str, Path_]]:
        name = f"{prefix}{m.name}"
        yield f"message {name}", path
        for i, field in enumerate(m.field):
            yield f"field {name}.{field.name}", (*path, MESSAGE_FIELD, i)
        for i, oneof in enumerate(m.oneof_decl):
            # proto3 `optional` makes a synthetic oneof that has no source of its own.
            if not oneof.name.startswith("_"):
                yield f"oneof {name}.{oneof.name}", (*path, MESSAGE_ONEOF, i)
        for i, nested in enumerate(m.nested_type):
            yield from message(nested, f"{name}.", (*path, MESSAGE_NESTED, i))
        for i, nested_enum in enumerate(m.enum_type):
            yield from enum(nested_enum, f"{name}.", (*path, MESSAGE_ENUM, i))

    for i, m in enumerate(file.message_type):
        yield from message(m, "", (FILE_MESSAGE, i))
    for i, e in enumerate(file.enum_type):
        yield from enum(e, "", (FILE_ENUM, i))
    for i, service in enumerate(file.service):
        yield f"service {service.name}", (FILE_SERVICE, i)
        for j, method in enumerate(service.method):
            yield f"rpc {service.name}.{method.name}", (FILE_SERVICE, i, SERVICE_METHOD, j)


def all_messages(
    contracts: descriptor_pb2.FileDescriptorSet,
) -> Iterator[descriptor_pb2.DescriptorProto]:
    def walk(m: descriptor_pb2.DescriptorProto) -> Iterator[descriptor_pb2.DescriptorProto]:
        yield m
        for nested in m.nested_type:
            yield from walk(nested)

    for file in contracts.file:
        for m in file.message_type:
            yield from walk(m)


def all_fields(
    contracts: descriptor_pb2.FileDescriptorSet,
) -> Iterator[tuple[str, descriptor_pb2.FieldDescriptorProto]]:
    for m in all_messages(contracts):
        for field in m.field:
            yield m.name, field


def all_enums(
    contracts: descriptor_pb2.FileDescriptorSet,
) -> Iterator[descriptor_pb2.EnumDescriptorProto]:
    for file in contracts.file:
        yield from file.enum_type
    for m in all_messages(contracts):
        yield from m.enum_type


# --- freshness of the generated code ---------------------------------------------------------


def test_generated_code_is_fresh() -> None:
    problems = protogen.check()
    assert problems == [], (
        f"generated code is stale: run `make proto` and commit ({protogen.generator_versions()})\n"
        + "\n".join(problems)
    )


def test_check_reports_every_kind_of_staleness_and_write_repairs_it(tmp_path: Path) -> None:
    """The freshness check is not vacuous: it sees edits, missing and stray files."""
    proto_root = tmp_path / "proto"
    shutil.copytree(protogen.PROTO_ROOT, proto_root)
    package = tmp_path / protogen.PACKAGE_PATH
    shutil.copytree(protogen.REPO_ROOT / protogen.PACKAGE_PATH, package)
    assert protogen.check(proto_root, tmp_path) == []

    common = proto_root / protogen.PACKAGE_PATH / "common.proto"
    common.write_text(
        common.read_text().replace(
            "message Failure {\n",
            "message Failure {\n  // Added by the test.\n  string added_by_test = 99;\n",
        )
    )
    (package / "wallet_pb2_grpc.pyi").unlink()
    (package / "gone_pb2.py").write_text("# a module whose .proto was deleted\n")

    assert protogen.check(proto_root, tmp_path) == [
        "missing: wallet_pb2_grpc.pyi",
        "not generated from proto/: gone_pb2.py",
        "stale: common_pb2.py",
        "stale: common_pb2.pyi",
    ]
    assert protogen.write(proto_root, tmp_path) == [
        "common_pb2.py",
        "common_pb2.pyi",
        "gone_pb2.py",
        "wallet_pb2_grpc.pyi",
    ]
    assert protogen.check(proto_root, tmp_path) == []
    assert (package / "__init__.py").exists()


def test_broken_contract_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    proto_root = tmp_path / "proto"
    shutil.copytree(protogen.PROTO_ROOT, proto_root)
    package = tmp_path / protogen.PACKAGE_PATH
    shutil.copytree(protogen.REPO_ROOT / protogen.PACKAGE_PATH, package)
    before = protogen.committed(package)
    pool = proto_root / protogen.PACKAGE_PATH / "pool.proto"
    pool.write_text(
        pool.read_text().replace("uint32 max_farmers = 4;", "NoSuchType max_farmers = 4;")
    )

    with pytest.raises(protogen.ProtogenError, match="NoSuchType"):
        protogen.write(proto_root, tmp_path)
    assert protogen.committed(package) == before


def test_generated_modules_carry_the_descriptors_of_proto(
    contracts: descriptor_pb2.FileDescriptorSet,
) -> None:
    """Independent of generator versions: what the modules register is what proto/ says."""
    for file in contracts.file:
        module = importlib.import_module(
            file.name.removesuffix(".proto").replace("/", ".") + "_pb2"
        )
        registered = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(registered)
        expected = descriptor_pb2.FileDescriptorProto()
        expected.CopyFrom(file)
        expected.ClearField("source_code_info")
        registered.ClearField("source_code_info")
        # CopyToProto leaves out json_name; compare what the wire depends on.
        for m in (*expected.message_type, *registered.message_type):
            for field in m.field:
                field.ClearField("json_name")
        assert registered == expected, file.name


# --- what the contracts must contain ---------------------------------------------------------


def test_every_service_is_defined_and_generated(
    contracts: descriptor_pb2.FileDescriptorSet,
) -> None:
    defined = {s.name for f in contracts.file for s in f.service}
    assert defined == set(SERVICES)
    for service, module_name in SERVICES.items():
        messages = importlib.import_module(module_name)
        grpc_module = importlib.import_module(module_name + "_grpc")
        assert service in messages.DESCRIPTOR.services_by_name
        for attribute in (
            f"{service}Stub",
            f"{service}Servicer",
            f"add_{service}Servicer_to_server",
        ):
            assert hasattr(grpc_module, attribute), attribute


def test_every_element_has_a_comment(contracts: descriptor_pb2.FileDescriptorSet) -> None:
    missing = []
    for file in contracts.file:
        found = comments(file)
        missing += [f"{file.name}: {what}" for what, path in elements(file) if path not in found]
    assert missing == [], "elements without a comment:\n" + "\n".join(missing)


def test_enums_start_unspecified_and_prefix_their_values(
    contracts: descriptor_pb2.FileDescriptorSet,
) -> None:
    enums = list(all_enums(contracts))
    assert {e.name for e in enums} >= {"FaultParty", "TxStatus", "FarmerStatus", "PoolerStatus"}
    for e in enums:
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", e.name).upper() + "_"
        assert e.value[0].number == 0 and e.value[0].name == f"{prefix}UNSPECIFIED", e.name
        for value in e.value:
            assert value.name.startswith(prefix), value.name
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", value.name), value.name


def test_fault_party_names_every_party(contracts: descriptor_pb2.FileDescriptorSet) -> None:
    (fault,) = (e for e in all_enums(contracts) if e.name == "FaultParty")
    assert [v.name.removeprefix("FAULT_PARTY_") for v in fault.value] == [
        "UNSPECIFIED",
        "NONE",
        "FARMER",
        "POOL",
        "POOLER",
        "CHAIN",
    ]


def test_each_rpc_has_its_own_request_and_response(
    contracts: descriptor_pb2.FileDescriptorSet,
) -> None:
    used: dict[str, str] = {}
    for file in contracts.file:
        for service in file.service:
            for method in service.method:
                rpc = f"{service.name}.{method.name}"
                assert method.input_type == f".kalepool.v1.{method.name}Request", rpc
                assert method.output_type == f".kalepool.v1.{method.name}Response", rpc
                for type_name in (method.input_type, method.output_type):
                    assert type_name not in used, (
                        f"{type_name} used by {used.get(type_name)} and {rpc}"
                    )
                    used[type_name] = rpc


def test_only_the_assignment_feed_streams(contracts: descriptor_pb2.FileDescriptorSet) -> None:
    streaming = {
        (service.name, method.name, method.client_streaming, method.server_streaming)
        for file in contracts.file
        for service in file.service
        for method in service.method
        if method.client_streaming or method.server_streaming
    }
    assert streaming == {("PoolerService", "StreamAssignments", False, True)}


def test_the_cycle_rpcs_exist(contracts: descriptor_pb2.FileDescriptorSet) -> None:
    methods = {s.name: {m.name for m in s.method} for f in contracts.file for s in f.service}
    assert methods["PoolerService"] >= {
        "RequestPlant",
        "StreamAssignments",
        "ReportWork",
        "RequestHarvest",
        "Heartbeat",
    }
    assert methods["WalletService"] >= {
        "CreateWallet",
        "GetWallet",
        "EnsureTrustline",
        "Plant",
        "Harvest",
        "Transfer",
        "CloseWallet",
        "GetTransaction",
    }
    assert methods["PoolService"] >= {
        "RegisterPooler",
        "RegisterFarmer",
        "ConfirmFunding",
        "GetFarmerBalance",
        "RequestPayout",
        "LeavePool",
        "GetBlock",
        "ListBlocks",
        "GetPoolStats",
        "GetPoolerStats",
        "ListCompensations",
    }


def test_field_types_follow_the_conventions(contracts: descriptor_pb2.FileDescriptorSet) -> None:
    wrong = []
    for message, field in all_fields(contracts):
        name = f"{message}.{field.name}"
        if field.name.endswith("_stroops"):
            if field.type != FDP.TYPE_INT64:
                wrong.append(f"{name}: amounts are int64 stroops")
        elif field.name.endswith("_at") or field.name in {"as_of", "work_deadline", "valid_until"}:
            if field.type_name != ".google.protobuf.Timestamp":
                wrong.append(f"{name}: times are google.protobuf.Timestamp")
        elif field.name.endswith(("_address", "public_key", "_id", "tx_hash")):
            if field.type != FDP.TYPE_STRING:
                wrong.append(f"{name}: addresses, ids and hashes are strings")
        elif field.name in {"block_index", "plant_ledger", "ledger", "zeros", "gap"}:
            if field.type != FDP.TYPE_UINT32:
                wrong.append(f"{name}: block indexes, ledgers, zeros and gaps are uint32")
        elif field.name in {"nonce", "cursor", "after_cursor"} and field.type != FDP.TYPE_UINT64:
            wrong.append(f"{name}: nonces and cursors are uint64")
        if field.name in {"hash", "entropy"} and field.type != FDP.TYPE_BYTES:
            wrong.append(f"{name}: hashes and entropy are bytes")
    assert wrong == []


def test_no_field_can_carry_a_secret_key(contracts: descriptor_pb2.FileDescriptorSet) -> None:
    leaking = [
        f"{message}.{field.name}"
        for message, field in all_fields(contracts)
        if re.search(r"secret|seed|private", field.name)
    ]
    assert leaking == []


def test_every_file_is_in_package_kalepool_v1(contracts: descriptor_pb2.FileDescriptorSet) -> None:
    assert {f.package for f in contracts.file} == {"kalepool.v1"}
    assert {f.syntax for f in contracts.file} == {"proto3"}


def test_assignment_carries_what_mining_needs() -> None:
    from kalepool.v1 import pooler_pb2

    assignment = pooler_pb2.Assignment(
        cursor=2**64 - 1,
        farmer_address="GBQHTQ7NTSKHVTSVM6EHUO3TU4P4BK2TAAII25V2TT2Q6OWXUJWEKALE",
        block_index=2**32 - 1,
        entropy=bytes(range(32)),
        stake_stroops=-(2**63),
        plant_ledger=123,
    )
    assignment.work_deadline.FromSeconds(1_700_000_300)
    reply = pooler_pb2.StreamAssignmentsResponse(assignment=assignment)
    decoded = pooler_pb2.StreamAssignmentsResponse.FromString(reply.SerializeToString())
    assert decoded == reply
    assert decoded.assignment.cursor == 2**64 - 1
    assert decoded.assignment.work_deadline.ToSeconds() == 1_700_000_300
    report = pooler_pb2.WorkReport(nonce=2**64 - 1, hash=b"\x00" * 32, zeros=8)
    assert pooler_pb2.WorkReport.FromString(report.SerializeToString()).nonce == 2**64 - 1
