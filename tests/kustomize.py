"""Rendering a kustomization of deploy/ as `kubectl kustomize` does, for the deploy tests.

`render()` runs `kubectl kustomize` when kubectl is installed; otherwise `render_here()`
renders it in Python, covering the features deploy/ uses and refusing any other: the
resources (files and directories), `namespace`, `labels` (without selectors),
`images`, and `patches` by path (strategic merge: lists of containers, env, ports,
volumes and mounts merge by their key, others are replaced). When kubectl is there the
two are compared (tests/test_deploy.py), so this one cannot drift from the real thing
unseen.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

#: The kustomization fields render_here() implements.
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}

#: Kinds without a namespace among those deploy/ holds.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterIssuer"}

#: Strategic merge keys of the lists a patch may reach (the Kubernetes API's own).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


def render(directory: Path) -> list[Doc]:
    """Every object the kustomization in `directory` renders."""
    if shutil.which("kubectl") is None:
        return render_here(directory)
    return render_with_kubectl(directory)


def render_with_kubectl(directory: Path) -> list[Doc]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def object_key(doc: Doc) -> tuple[str, str, str]:
    """What identifies an object: its kind, namespace and name."""
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def render_here(directory: Path) -> list[Doc]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    assert not unknown, f"{directory}: render_here() does not implement {sorted(unknown)}"
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs += render_here(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"{directory}: only patches by path are implemented"
        for change in yaml.safe_load_all((directory / patch["path"]).read_text()):
            if change:
                _patch(docs, change, directory)
    namespace = kustomization.get("namespace")
    for doc in docs:
        meta = doc["metadata"]
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        for label in kustomization.get("labels", []):
            assert not label.get("includeSelectors") and not label.get("includeTemplates")
            meta["labels"] = {**meta.get("labels", {}), **label["pairs"]}
        for image in kustomization.get("images", []):
            _set_image(doc, image)
    return docs


def _patch(docs: list[Doc], change: Doc, directory: Path) -> None:
    targets = [
        d
        for d in docs
        if d["kind"] == change["kind"] and d["metadata"]["name"] == change["metadata"]["name"]
    ]
    assert len(targets) == 1, f"{directory}: a patch matches {len(targets)} objects"
    merged = _merge(targets[0], change)
    targets[0].clear()
    targets[0].update(merged)


def _merge(base: Any, change: Any, field: str = "") -> Any:
    """Strategic merge of `change` into `base` (a new value)."""
    if isinstance(base, dict) and isinstance(change, dict):
        out = copy.deepcopy(base)
        for name, value in change.items():
            if value is None:
                out.pop(name, None)
            else:
                out[name] = _merge(out[name], value, name) if name in out else value
        return out
    merge_key = MERGE_KEYS.get(field)
    if isinstance(base, list) and isinstance(change, list) and merge_key is not None:
        out_list = copy.deepcopy(base)
        for item in change:
            same = [i for i, old in enumerate(out_list) if old[merge_key] == item[merge_key]]
            if same:
                out_list[same[0]] = _merge(out_list[same[0]], item, field)
            else:
                out_list.append(item)
        return out_list
    return copy.deepcopy(change)


def _set_image(doc: Doc, image: Doc) -> None:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name = container.get("image", "").split("@")[0].rsplit(":", 1)[0]
        if name == image["name"]:
            container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
