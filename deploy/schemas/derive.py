"""Derive a custom resource's JSON schema (deploy/schemas/) from its upstream CRD.

    kubectl kustomize deploy/overlays/mainnet > rendered.yaml   # and the others
    python deploy/schemas/derive.py CRD.yaml rendered.yaml ... > deploy/schemas/KIND.json

Takes the CRD's `v1` openAPIV3Schema and keeps, under `spec`, only the fields the given
manifests use (all of `spec` when none uses the kind yet), with their types, enums,
patterns and required keys; each kept object gets `additionalProperties: false`, so a
misspelt or new field fails the tests (a cluster would silently prune it) until the
schema is derived again. Descriptions, status and CEL rules (which JSON Schema cannot
evaluate) are left out. Reads files only: nothing is fetched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

KEEP = {
    "type",
    "enum",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "required",
}

METADATA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def prune(schema: dict[str, Any], values: list[Any] | None) -> dict[str, Any]:
    """`schema` cut to what `values` use (None: keep every field)."""
    if schema.get("x-kubernetes-int-or-string"):
        return {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    out = {k: v for k, v in schema.items() if k in KEEP}
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return out
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            out[key] = [prune(s, None) for s in schema[key]]
    if "properties" in schema:
        seen = [v for v in values or [] if isinstance(v, dict)]
        used = None if values is None else {k for v in seen for k in v}
        out["properties"] = {
            name: prune(sub, None if values is None else [v[name] for v in seen if name in v])
            for name, sub in schema["properties"].items()
            if used is None or name in used
        }
        out["additionalProperties"] = False
    elif isinstance(schema.get("additionalProperties"), dict):
        maps = [v for v in values or [] if isinstance(v, dict)]
        inner = None if values is None else [x for m in maps for x in m.values()]
        out["additionalProperties"] = prune(schema["additionalProperties"], inner)
    if "items" in schema:
        lists = [v for v in values or [] if isinstance(v, list)]
        inner = None if values is None else [x for v in lists for x in v]
        out["items"] = prune(schema["items"], inner)
    return out


def derive(crd: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    used = [d["spec"] for d in docs if d.get("kind") == kind and "spec" in d]
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": f"{kind} ({group}/v1), the fields kale-pool uses",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": f"{group}/v1"},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": prune(spec, used or None),
        },
    }


def main(crd_path: str, *manifests: str) -> None:
    (crd,) = [d for d in yaml.safe_load_all(Path(crd_path).read_text()) if d]
    docs = [d for path in manifests for d in yaml.safe_load_all(Path(path).read_text()) if d]
    json.dump(derive(crd, docs), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
