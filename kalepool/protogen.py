"""Generate the Python modules and type stubs of the wire contracts in `proto/`.

`python -m kalepool.protogen` (`make proto`) regenerates `kalepool/v1` from
`proto/kalepool/v1/*.proto`: messages (`*_pb2.py`), gRPC stubs and servicers
(`*_pb2_grpc.py`) and their type stubs (`*.pyi`, from mypy-protobuf, which types
both the messages and the sync and `grpc.aio` service classes).
`python -m kalepool.protogen --check` regenerates into a temporary directory
and fails when the committed files differ, which is what the test suite runs.

The generators are dev dependencies (grpcio-tools, mypy-protobuf); they run in a
subprocess, so importing this module needs neither.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
# Where the .proto files live under the include root, and so where the
# generated modules land under the output root: `kalepool/v1/<name>_pb2.py`.
PACKAGE_PATH = Path("kalepool", "v1")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
# Files in the generated package that are not generated (kept by write()).
HANDWRITTEN = frozenset({"__init__.py"})


class ProtogenError(Exception):
    """Generation failed: a generator is missing or protoc refused the contracts."""


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The contract files, as paths relative to the include root, sorted."""
    files = sorted(p.relative_to(proto_root) for p in (proto_root / PACKAGE_PATH).glob("*.proto"))
    if not files:
        raise ProtogenError(f"no .proto files under {proto_root / PACKAGE_PATH}")
    return files


def is_generated(name: str) -> bool:
    """Whether a file name in the generated package is protoc's output."""
    return name.endswith(GENERATED_SUFFIXES)


def _plugin(name: str) -> Path:
    """A protoc plugin executable: next to this interpreter (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found is None:
        raise ProtogenError(f"{name} not found: install the dev extra (mypy-protobuf)")
    return Path(found)


def _well_known_include() -> Path:
    """grpcio-tools' copy of the well-known types (google/protobuf/timestamp.proto, ...)."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or not spec.submodule_search_locations:
        raise ProtogenError("grpcio-tools is not installed: install the dev extra")
    return Path(spec.submodule_search_locations[0], "_proto")


def _protoc(args: Sequence[str], proto_root: Path) -> None:
    """Run grpcio-tools' bundled protoc with the include roots set."""
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={_well_known_include()}",
        *args,
        *(str(f) for f in proto_files(proto_root)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ProtogenError(f"protoc failed:\n{result.stderr.strip()}")


def descriptor_set(
    proto_root: Path = PROTO_ROOT, *, include_source_info: bool = False
) -> descriptor_pb2.FileDescriptorSet:
    """Compile the contracts to descriptors (with comments when include_source_info)."""
    with tempfile.TemporaryDirectory(prefix="kalepool-protogen-") as tmp:
        out = Path(tmp, "contracts.binpb")
        args = [f"--descriptor_set_out={out}"]
        if include_source_info:
            args.append("--include_source_info")
        _protoc(args, proto_root)
        descriptors = descriptor_pb2.FileDescriptorSet()
        descriptors.ParseFromString(out.read_bytes())
        return descriptors


def generate(out_root: Path, proto_root: Path = PROTO_ROOT) -> dict[str, bytes]:
    """Generate every module and stub under out_root/kalepool/v1; return them by file name."""
    mypy = _plugin("protoc-gen-mypy")
    mypy_grpc = _plugin("protoc-gen-mypy_grpc")
    _protoc(
        [
            f"--plugin=protoc-gen-mypy={mypy}",
            f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--mypy_out=quiet:{out_root}",
            f"--mypy_grpc_out=quiet:{out_root}",
        ],
        proto_root,
    )
    package = out_root / PACKAGE_PATH
    # The gRPC plugins write a module for every file, even one without a
    # service; such a module only checks the grpcio version, so drop it.
    for file in descriptor_set(proto_root).file:
        if not file.service:
            stem = Path(file.name).stem
            for suffix in ("_pb2_grpc.py", "_pb2_grpc.pyi"):
                (package / f"{stem}{suffix}").unlink(missing_ok=True)
    return {p.name: p.read_bytes() for p in sorted(package.iterdir()) if is_generated(p.name)}


def generator_versions() -> str:
    """The installed generators; their versions decide the exact output."""
    found = []
    for dist in ("grpcio-tools", "mypy-protobuf", "protobuf"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{dist} (not installed)")
    return ", ".join(found)


def committed(package_dir: Path) -> dict[str, bytes]:
    """The generated files present in a package directory, by file name."""
    if not package_dir.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(package_dir.iterdir()) if is_generated(p.name)}


def check(proto_root: Path = PROTO_ROOT, repo_root: Path = REPO_ROOT) -> list[str]:
    """Differences between the committed generated files and fresh ones; empty when fresh."""
    with tempfile.TemporaryDirectory(prefix="kalepool-protogen-") as tmp:
        fresh = generate(Path(tmp), proto_root)
    present = committed(repo_root / PACKAGE_PATH)
    problems = [f"missing: {name}" for name in sorted(fresh.keys() - present.keys())]
    problems += [
        f"not generated from proto/: {name}" for name in sorted(present.keys() - fresh.keys())
    ]
    problems += [
        f"stale: {name}"
        for name in sorted(fresh.keys() & present.keys())
        if fresh[name] != present[name]
    ]
    return problems


def write(proto_root: Path = PROTO_ROOT, repo_root: Path = REPO_ROOT) -> list[str]:
    """Regenerate the committed files in place; return the names that changed."""
    package = repo_root / PACKAGE_PATH
    with tempfile.TemporaryDirectory(prefix="kalepool-protogen-") as tmp:
        # Generate fully before touching the tree, so a protoc error changes nothing.
        fresh = generate(Path(tmp), proto_root)
    package.mkdir(parents=True, exist_ok=True)
    present = committed(package)
    changed = []
    for name in sorted(present.keys() - fresh.keys()):
        (package / name).unlink()
        changed.append(name)
    for name, content in fresh.items():
        if present.get(name) != content:
            (package / name).write_bytes(content)
            changed.append(name)
    init = package / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated wire contracts, package kalepool.v1 (make proto)."""\n')
    return sorted(changed)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: regenerate, or with --check report stale generated files."""
    parser = argparse.ArgumentParser(
        prog="python -m kalepool.protogen",
        description="Regenerate kalepool/v1 from proto/ (or check that it is fresh).",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 when the committed files differ from fresh ones",
    )
    options = parser.parse_args(argv)
    try:
        if options.check:
            problems = check()
            for problem in problems:
                print(f"kalepool/v1 {problem}", file=sys.stderr)
            if problems:
                print(
                    "generated code is stale: run `make proto` and commit"
                    f" (generators here: {generator_versions()})",
                    file=sys.stderr,
                )
                return 1
            print("generated code is fresh")
            return 0
        changed = write()
    except ProtogenError as error:
        print(f"protogen: {error}", file=sys.stderr)
        return 2
    print(f"regenerated {len(changed)} file(s)" + (": " + ", ".join(changed) if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
