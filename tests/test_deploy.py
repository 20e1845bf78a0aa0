"""The Kubernetes manifests under deploy/: structure and cross-references.

No cluster runs here, so these tests read the YAML and check what a cluster would
only reveal at start-up: files a kustomization names exist, every Secret and
ConfigMap a pod uses is defined (or documented as the operator's to create),
every environment variable is a real setting, ports agree with the listen
settings, certificates land under the names the services read, and network
policies select real pods. Every overlay is rendered (`kubectl kustomize`, or
tests/kustomize.py without kubectl) and each object it renders validated offline and
strictly: core kinds with kubernetes-validate's schemas, custom resources with the
schemas in deploy/schemas/.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kalepool.db.roles import POOL, ROLES, WALLET
from kalepool.settings import DataLayout, Settings, load_settings
from kalepool.tls import POOL_CLIENT, POOL_SERVER, WALLET_SERVER, DevPki
from pool_service.server import POOL_SERVICE, POOLER_SERVICE
from tests.kustomize import object_key, render, render_here, render_with_kubectl
from wallet_service.server import SERVICE_NAME as WALLET_SERVICE

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = [DEPLOY / "overlays" / "testnet", DEPLOY / "overlays" / "mainnet"]
POOLER = DEPLOY / "pooler"
SCHEMAS = DEPLOY / "schemas"
DOC = ROOT / "docs" / "deploy.md"

#: Secrets the operator creates by hand (docs/deploy.md says how); never in manifests.
OPERATOR_SECRETS = {
    "kale-pool-master-key",
    "kale-pool-db-wallet",
    "kale-pool-db-pool",
    "kale-pool-db-auditor",
    "kale-pool-backup-s3",
    "pooler-1-api-key",
    "pooler-1-channel-secrets",
    # made on the mining machine from its own key and the signed CSR
    "pooler-1-tls",
}

#: The Secret whose `uri` is each process's DATABASE_URL: one set of credentials each,
#: the owner's (CloudNativePG's application Secret) for the migrations alone.
DATABASE_SECRETS = {
    "kale-pool-migrate": "kale-pool-db-app",
    "wallet-service": "kale-pool-db-wallet",
    "pool-service": "kale-pool-db-pool",
}

#: Settings that hold secrets: never a literal value in a manifest.
SECRET_SETTINGS = {"database_url", "master_key", "pooler_api_key", "pooler_channel_secrets"}

Doc = dict[str, Any]


def _docs(directory: Path) -> list[Doc]:
    """Every YAML document in the files of one directory (not below it)."""
    found: list[Doc] = []
    for path in sorted(directory.glob("*.yaml")):
        found.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return found


def _all_yaml() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def _of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def _setting_env_names() -> set[str]:
    names = {f"KALE_POOL_{name.upper()}" for name in Settings.model_fields}
    return names | {"DATABASE_URL"}


def _containers(deployment: Doc) -> list[Doc]:
    """A Deployment's or Job's containers (none in an overlay's partial patch)."""
    return list(deployment["spec"].get("template", {}).get("spec", {}).get("containers", []))


def _workloads(docs: list[Doc]) -> dict[str, Doc]:
    """Everything that runs pods: the Deployments and the Jobs."""
    return _of_kind(docs, "Deployment") | _of_kind(docs, "Job")


def _database_secret(workload: Doc) -> str | None:
    """The Secret a workload's DATABASE_URL comes from (None: it has no database)."""
    for container in _containers(workload):
        for var in container.get("env", []):
            if var["name"] == "DATABASE_URL":
                return str(var["valueFrom"]["secretKeyRef"]["name"])
    return None


def _pod_labels(deployment: Doc) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def _config_env(container: Doc, configmaps: dict[str, Doc]) -> dict[str, str]:
    """The plain (non-secret) environment a container gets, as Kubernetes merges it."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def _secret_volume_refs(pod_spec: Doc) -> Iterator[tuple[str, str, list[Doc]]]:
    """(volume name, secret name, items) for every secret a pod's volumes mount."""
    for volume in pod_spec.get("volumes", []):
        if "secret" in volume:
            yield volume["name"], volume["secret"]["secretName"], volume["secret"]["items"]
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                yield volume["name"], source["secret"]["name"], source["secret"]["items"]


def _secret_refs(deployment: Doc) -> set[str]:
    spec = deployment["spec"]["template"]["spec"]
    names = {secret for _, secret, _ in _secret_volume_refs(spec)}
    for container in spec["containers"]:
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                names.add(source["secretRef"]["name"])
    return names


def _defined_secrets(docs: list[Doc]) -> set[str]:
    """Secrets the manifests cause to exist: cert-manager and CloudNativePG write them."""
    names = {c["spec"]["secretName"] for c in _of_kind(docs, "Certificate").values()}
    names |= {f"{name}-app" for name in _of_kind(docs, "Cluster")}
    return names


def _kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


# --- parsing and kustomizations --------------------------------------------------


@pytest.mark.parametrize("path", _all_yaml(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_parses_and_names_its_kind(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), (
            f"{path}: a document lacks apiVersion/kind"
        )
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], f"{path}: a {doc['kind']} has no name"


@pytest.mark.parametrize("directory", _kustomization_dirs(), ids=lambda p: p.name)
def test_kustomization_lists_files_that_exist(directory: Path) -> None:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = list(kustomization.get("resources", []))
    listed += [p["path"] for p in kustomization.get("patches", []) if "path" in p]
    assert listed
    for entry in listed:
        target = (directory / entry).resolve()
        assert target.exists(), f"{directory.name}/kustomization.yaml lists missing {entry}"
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), f"{entry} is no kustomization"


def test_the_base_holds_every_part_of_the_pool() -> None:
    docs = _docs(BASE)
    deployments = _of_kind(docs, "Deployment")
    assert deployments["wallet-service"]["spec"]["replicas"] == 1
    # Pool replicas share a block's work through the database (docs/database.md).
    assert _of_kind(docs, "HorizontalPodAutoscaler")["pool-service"]["spec"]["minReplicas"] == 2
    assert _of_kind(docs, "Cluster")["kale-pool-db"]["spec"]["instances"] == 3
    assert set(_of_kind(docs, "Certificate")) >= {
        POOL_SERVER,
        WALLET_SERVER,
        POOL_CLIENT,
        "operator",
    }
    issuers = _of_kind(docs, "Issuer")
    assert any("ca" in issuer["spec"] for issuer in issuers.values())
    assert {s["spec"]["type"] for s in _of_kind(docs, "Service").values()} == {"ClusterIP"}


# --- references ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directory", "extra"),
    [(BASE, []), (POOLER, [])],
    ids=["base", "pooler"],
)
def test_referenced_secrets_and_configmaps_are_defined_or_documented(
    directory: Path, extra: list[Path]
) -> None:
    docs = _docs(directory)
    for path in extra:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    configmaps = _of_kind(docs, "ConfigMap")
    defined = _defined_secrets(docs)
    doc_text = DOC.read_text()
    for name, deployment in _workloads(docs).items():
        for container in _containers(deployment):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps, name
        for secret in _secret_refs(deployment):
            if secret in OPERATOR_SECRETS:
                assert f"`{secret}`" in doc_text, f"{secret} is not documented in docs/deploy.md"
            else:
                assert secret in defined, f"{name} uses Secret {secret}, which nothing defines"


def test_every_environment_variable_is_a_real_setting() -> None:
    known = _setting_env_names()
    for directory in [BASE, POOLER, *OVERLAYS]:
        docs = _docs(directory)
        for configmap in _of_kind(docs, "ConfigMap").values():
            unknown = set(configmap.get("data", {})) - known
            assert not unknown, f"{directory.name}: {configmap['metadata']['name']}: {unknown}"
        for deployment in _workloads(docs).values():
            for container in _containers(deployment):
                unknown = {v["name"] for v in container.get("env", [])} - known
                assert not unknown, f"{directory.name}: {unknown}"


def test_no_secret_value_is_written_in_a_manifest() -> None:
    secret_envs = {f"KALE_POOL_{name.upper()}" for name in SECRET_SETTINGS} | {"DATABASE_URL"}
    seed = re.compile(r"\bS[A-Z2-7]{55}\b")  # a Stellar secret key
    url_with_password = re.compile(r"postgres(ql)?://[^\s:/@]+:[^\s@]+@")
    for path in _all_yaml():
        text = path.read_text()
        assert "PRIVATE KEY" not in text, path
        assert not seed.search(text), path
        assert not url_with_password.search(text), path
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            assert doc.get("kind") != "Secret", f"{path}: Secrets are created by hand"
            if doc.get("kind") == "ConfigMap":
                assert not set(doc.get("data", {})) & secret_envs, path
            if doc.get("kind") in ("Deployment", "Job"):
                for container in _containers(doc):
                    for var in container.get("env", []):
                        if var["name"] in secret_envs:
                            assert "valueFrom" in var, f"{path}: {var['name']} set in plain text"


# --- ports, probes, certificates ---------------------------------------------------


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_container_and_service_ports_match_the_listen_settings() -> None:
    docs = _docs(BASE)
    configmaps = _of_kind(docs, "ConfigMap")
    deployments = _of_kind(docs, "Deployment")
    services = _of_kind(docs, "Service")
    listen = {"wallet-service": "KALE_POOL_WALLET_LISTEN", "pool-service": "KALE_POOL_POOL_LISTEN"}
    for name, setting in listen.items():
        (container,) = _containers(deployments[name])
        env = _config_env(container, configmaps)
        assert env[setting].startswith("0.0.0.0:"), f"{name} must listen on the pod's addresses"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == _port(env[setting])
        if "metrics" in ports:
            assert env["KALE_POOL_METRICS_HOST"] == "0.0.0.0"
            assert ports["metrics"] == int(env["KALE_POOL_METRICS_PORT"])
            annotations = deployments[name]["spec"]["template"]["metadata"]["annotations"]
            assert int(annotations["prometheus.io/port"]) == ports["metrics"]
        service_ports = {p["name"]: p for p in services[name]["spec"]["ports"]}
        assert service_ports["grpc"]["port"] == ports["grpc"]
        assert services[name]["spec"]["selector"].items() <= _pod_labels(deployments[name]).items()
    # The pool dials the wallet service through its Service, at its port.
    (pool,) = _containers(deployments["pool-service"])
    host, port = _config_env(pool, configmaps)["KALE_POOL_WALLET_LISTEN"].rsplit(":", 1)
    assert host == "wallet-service"
    assert int(port) == services["wallet-service"]["spec"]["ports"][0]["port"]
    assert host in _of_kind(docs, "Certificate")[WALLET_SERVER]["spec"]["dnsNames"]


#: Each service: its health-listen setting and the service its readiness probe names.
HEALTH = {
    "wallet-service": ("KALE_POOL_WALLET_HEALTH_LISTEN", WALLET_SERVICE),
    "pool-service": ("KALE_POOL_POOL_HEALTH_LISTEN", POOLER_SERVICE),
}

#: What a service's stop gives calls in flight after the drain (`server.stop` in
#: wallet_service/server.py and pool_service/server.py).
STOP_GRACE_SECONDS = 5


def test_probes_are_native_grpc_on_the_plaintext_health_port() -> None:
    """The kubelet's gRPC probes call each service's health-only port (no client
    certificate needed there), never the mTLS port, and the port is not published."""
    docs = _docs(BASE)
    configmaps = _of_kind(docs, "ConfigMap")
    services = _of_kind(docs, "Service")
    assert set(_of_kind(docs, "Deployment")) == set(HEALTH)
    for name, deployment in _of_kind(docs, "Deployment").items():
        setting, served = HEALTH[name]
        (container,) = _containers(deployment)
        env = _config_env(container, configmaps)
        assert env[setting].startswith("0.0.0.0:"), f"{name}: the kubelet dials the pod's IP"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["health"] == _port(env[setting]) != ports["grpc"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = container[probe]
            assert set(spec) - {"periodSeconds", "failureThreshold"} == {"grpc"}, (name, probe)
            assert spec["grpc"]["port"] == ports["health"], (name, probe)
        # Ready: the service the pod is for; alive and started: the server as a whole.
        assert container["readinessProbe"]["grpc"]["service"] == served
        assert served in (WALLET_SERVICE, POOL_SERVICE, POOLER_SERVICE)
        assert "service" not in container["livenessProbe"]["grpc"]
        assert "service" not in container["startupProbe"]["grpc"]
        published = {p["targetPort"] for p in services[name]["spec"]["ports"]}
        assert "health" not in published and ports["health"] not in published
        # The drain and the stop's grace fit in the pod's termination grace period.
        drain = float(configmaps["kale-pool-config"]["data"]["KALE_POOL_SHUTDOWN_DRAIN_SECONDS"])
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert drain > 0 and drain + STOP_GRACE_SECONDS < grace, name


def test_no_pod_reaches_the_health_ports() -> None:
    """The plaintext health port is the kubelet's: no network policy lets a pod in (the
    kubelet's probes come from the node, which most CNIs do not filter)."""
    docs = _docs(BASE)
    configmaps = _of_kind(docs, "ConfigMap")
    health_ports = set()
    for name, (setting, _) in HEALTH.items():
        (container,) = _containers(_of_kind(docs, "Deployment")[name])
        health_ports.add(_port(_config_env(container, configmaps)[setting]))
    for pod, allowed in _allowed(BASE, "ingress").items():
        assert not {port for _, port in allowed} & health_ports, pod


def test_disruption_budgets_keep_the_services_up() -> None:
    """Drains take pool replicas one at a time; the single wallet signer waits for the
    operator; a pod that is not ready never blocks a drain."""
    docs = _docs(BASE)
    deployments = _of_kind(docs, "Deployment")
    budgets = _of_kind(docs, "PodDisruptionBudget")
    assert set(budgets) == {"wallet-service", "pool-service"}
    for name, budget in budgets.items():
        spec = budget["spec"]
        assert spec["selector"]["matchLabels"].items() <= _pod_labels(deployments[name]).items()
        assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert budgets["pool-service"]["spec"]["maxUnavailable"] == 1
    assert budgets["wallet-service"]["spec"]["minAvailable"] == 1
    assert deployments["wallet-service"]["spec"]["replicas"] == 1


def test_the_pool_service_scales_horizontally() -> None:
    """An HPA owns the pool's replica count (the Deployment names none, so a re-apply
    keeps what it chose) and scales on CPU, which the container requests; the wallet,
    a single signer, does not scale."""
    docs = _docs(BASE)
    (hpa,) = _of_kind(docs, "HorizontalPodAutoscaler").values()
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "pool-service",
    }
    pool = _of_kind(docs, "Deployment")["pool-service"]
    assert "replicas" not in pool["spec"]
    assert 2 == spec["minReplicas"] < spec["maxReplicas"]
    (metric,) = spec["metrics"]
    assert metric["resource"]["name"] == "cpu"
    (container,) = _containers(pool)
    assert container["resources"]["requests"]["cpu"]
    bounds = {}
    for overlay in OVERLAYS:
        (rendered,) = _of_kind(_rendered(overlay), "HorizontalPodAutoscaler").values()
        bounds[overlay.name] = (rendered["spec"]["minReplicas"], rendered["spec"]["maxReplicas"])
    assert bounds["testnet"][0] == 1
    assert bounds["mainnet"][0] >= 2, "mainnet keeps a second replica through a drain"
    assert all(low < high for low, high in bounds.values())


def test_service_monitors_scrape_each_services_metrics_port() -> None:
    docs = _docs(BASE)
    services = _of_kind(docs, "Service")
    deployments = _of_kind(docs, "Deployment")
    configmaps = _of_kind(docs, "ConfigMap")
    monitors = _of_kind(docs, "ServiceMonitor")
    assert set(monitors) == set(deployments)
    for name, monitor in monitors.items():
        labels = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [
            s for s in services.values() if labels.items() <= s["metadata"]["labels"].items()
        ]
        assert service["metadata"]["name"] == name
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        (container,) = _containers(deployments[name])
        target = {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]]
        assert target == int(_config_env(container, configmaps)["KALE_POOL_METRICS_PORT"])
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert "service-monitors.yaml" in kustomization["resources"]


@pytest.mark.parametrize(
    ("directory", "deployment", "names"),
    [
        (BASE, "wallet-service", [WALLET_SERVER]),
        (BASE, "pool-service", [POOL_SERVER, POOL_CLIENT]),
        (POOLER, "pooler-1", ["pooler-1"]),
    ],
)
def test_certificates_land_where_the_service_reads_them(
    directory: Path, deployment: str, names: list[str]
) -> None:
    docs = _docs(directory)
    certificates = {c["spec"]["secretName"]: c for c in _of_kind(docs, "Certificate").values()}
    pod = _of_kind(docs, "Deployment")[deployment]
    (container,) = _containers(pod)
    env = _config_env(container, _of_kind(docs, "ConfigMap"))
    certs_dir = DataLayout(Path(env["KALE_POOL_DATA_DIR"])).certs
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    files: dict[str, tuple[str, str]] = {}
    for volume, secret, items in _secret_volume_refs(pod["spec"]["template"]["spec"]):
        if Path(mounts[volume]["mountPath"]) == certs_dir:
            files.update({item["path"]: (secret, item["key"]) for item in items})
    assert files.get("ca.pem", ("", ""))[1] == "ca.crt"
    for name in names:
        cert_secret, cert_key = files[f"{name}.pem"]
        key_secret, key_key = files[f"{name}-key.pem"]
        assert (cert_key, key_key) == ("tls.crt", "tls.key")
        assert cert_secret == key_secret
        if deployment == "pooler-1":
            # Made on the mining machine (its key never leaves it); the CN is the CSR's,
            # `kale-pool pooler keygen <name>`.
            assert cert_secret in OPERATOR_SECRETS
            continue
        # The services check callers by common name: the file's name is the CN.
        assert certificates[cert_secret]["spec"]["commonName"] == name
    if deployment == "pooler-1":
        assert env["KALE_POOL_POOLER_CERT_NAME"] == names[0]


def test_pooler_keys_are_made_on_the_mining_machine_and_only_a_csr_is_signed() -> None:
    """No manifest makes a pooler's private key in the pool's cluster: cert-manager signs
    a CertificateRequest built from the CSR `kale-pool pooler keygen` made, as a client
    certificate of the kale-pool CA."""
    services = {"kale-pool CA", POOL_SERVER, WALLET_SERVER, POOL_CLIENT, "operator"}
    for path in _all_yaml():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Certificate":
                assert doc["spec"]["commonName"] in services, (path, doc["metadata"]["name"])
    (request,) = _of_kind(
        [d for d in yaml.safe_load_all((POOLER / "certificate-request.yaml").read_text()) if d],
        "CertificateRequest",
    ).values()
    assert request["metadata"]["namespace"] == "kale-pool"  # applied where the CA lives
    spec = request["spec"]
    assert spec["issuerRef"] == {"name": "kale-pool-ca", "kind": "Issuer"}
    assert "client auth" in spec["usages"] and "server auth" not in spec["usages"]
    assert spec.get("isCA") is not True
    assert "REPLACE-ME" in spec["request"]  # the mining machine's CSR, base64
    # It is applied in the pool's cluster, not with the mining machine's kustomization.
    kustomization = yaml.safe_load((POOLER / "kustomization.yaml").read_text())
    assert "certificate-request.yaml" not in kustomization["resources"]
    doc = DOC.read_text()
    assert "kale-pool pooler keygen" in doc and "kale-pool pooler cert add" in doc


def test_the_master_key_is_a_mounted_file_and_the_wallet_sees_no_other_secret() -> None:
    wallet = _of_kind(_docs(BASE), "Deployment")["wallet-service"]
    (container,) = _containers(wallet)
    path = next(
        Path(v["value"]) for v in container["env"] if v["name"] == "KALE_POOL_MASTER_KEY_FILE"
    )
    mounts = {m["name"]: Path(m["mountPath"]) for m in container["volumeMounts"]}
    sources = {
        mounts[volume] / item["path"]: secret
        for volume, secret, items in _secret_volume_refs(wallet["spec"]["template"]["spec"])
        for item in items
    }
    assert sources[path] == "kale-pool-master-key"
    assert _secret_refs(wallet) == {
        "kale-pool-master-key",
        "kale-pool-db-wallet",
        "wallet-service-tls",
    }


def test_containers_run_unprivileged() -> None:
    for directory in (BASE, POOLER):
        for name, deployment in _workloads(_docs(directory)).items():
            pod = deployment["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["automountServiceAccountToken"] is False, name
            for container in pod["containers"]:
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True, name
                assert context["allowPrivilegeEscalation"] is False, name
                assert context["capabilities"]["drop"] == ["ALL"], name
                assert container["resources"]["requests"], name
                assert container["resources"]["limits"]["memory"], name


# --- network policies ---------------------------------------------------------------


#: Address ranges a rule to "the internet" must leave out: private networks, carrier-grade
#: NAT and link-local (the cloud metadata endpoint, which hands out credentials).
NOT_PUBLIC = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"}


def _pods(docs: list[Doc]) -> dict[str, dict[str, str]]:
    """Each kind of pod of a directory (workloads and database clusters) by its labels."""
    pods = {name: _pod_labels(d) for name, d in _workloads(docs).items()}
    return pods | {name: {"cnpg.io/cluster": name} for name in _of_kind(docs, "Cluster")}


def _selected(selector: Doc, pods: dict[str, dict[str, str]]) -> set[str]:
    """The pods a label selector picks (matchLabels and `In` expressions)."""
    found = set()
    for name, labels in pods.items():
        if not selector.get("matchLabels", {}).items() <= labels.items():
            continue
        if all(
            e["operator"] == "In" and labels.get(e["key"]) in e["values"]
            for e in selector.get("matchExpressions", [])
        ):
            found.add(name)
    return found


def _peer(peer: Doc, pods: dict[str, dict[str, str]], policy: str) -> set[str]:
    """What a rule's peer stands for: pod names of this namespace, `dns`, `cluster` (any
    pod of any namespace), `public` (internet addresses only) or `anywhere`."""
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        assert block["cidr"] == "0.0.0.0/0", policy
        return {"public"} if set(block.get("except", [])) >= NOT_PUBLIC else {"anywhere"}
    if "namespaceSelector" in peer:
        namespaces = peer["namespaceSelector"].get("matchLabels", {})
        if namespaces == {"kubernetes.io/metadata.name": "kube-system"}:
            assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}, policy
            return {"dns"}
        if not namespaces and "podSelector" not in peer:
            return {"cluster"}
        return {f"namespace {namespaces}"}
    picked = _selected(peer["podSelector"], pods)
    assert picked, f"{policy}: a rule selects no pod"
    return picked


def _allowed(directory: Path, direction: str) -> dict[str, set[tuple[str, int]]]:
    """Per pod: (peer, port) pairs its policies allow for ``direction`` (ingress/egress);
    a rule without peers allows `anywhere`."""
    docs = _docs(directory)
    pods = _pods(docs)
    allowed: dict[str, set[tuple[str, int]]] = {name: set() for name in pods}
    key, side = ("ingress", "from") if direction == "ingress" else ("egress", "to")
    for name, policy in _of_kind(docs, "NetworkPolicy").items():
        targets = _selected(policy["spec"]["podSelector"], pods)
        assert targets, f"{name} selects no pod"
        for rule in policy["spec"].get(key, []):
            peers: set[str] = set()
            for peer in rule.get(side, [{"ipBlock": {"cidr": "0.0.0.0/0"}}]):
                peers |= _peer(peer, pods, name)
            ports = [p["port"] for p in rule["ports"]]
            assert ports, f"{name}: a rule allows every port"
            for target in targets:
                allowed[target] |= {(peer, port) for peer in peers for port in ports}
    return allowed


@pytest.mark.parametrize("directory", [BASE, POOLER], ids=["base", "pooler"])
def test_each_namespace_denies_by_default(directory: Path) -> None:
    """One policy selects every pod for both directions and allows nothing: whatever no
    other policy allows is refused, a pod added later included."""
    deny = [
        p
        for p in _of_kind(_docs(directory), "NetworkPolicy").values()
        if p["spec"]["podSelector"] == {}
    ]
    assert len(deny) == 1
    spec = deny[0]["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in spec and "egress" not in spec


def test_network_policies_select_real_pods() -> None:
    docs = _docs(BASE)
    deployments = _of_kind(docs, "Deployment")
    policies = _of_kind(docs, "NetworkPolicy")
    ingress = _allowed(BASE, "ingress")
    assert ingress["wallet-service"] == {("pool-service", 50052), ("cluster", 9090)}
    assert ingress["pool-service"] == {("anywhere", 50051), ("cluster", 9090)}
    assert {peer for peer, port in ingress["kale-pool-db"] if port == 5432} == {
        "pool-service",
        "wallet-service",
        "kale-pool-migrate",
        "kale-pool-db",
        "namespace {'kubernetes.io/metadata.name': 'cnpg-system'}",
    }
    assert ingress["kale-pool-migrate"] == set()
    (wallet,) = _containers(deployments["wallet-service"])
    wallet_rule = policies["wallet-service-ingress"]["spec"]["ingress"][0]
    assert [p["port"] for p in wallet_rule["ports"]] == [wallet["ports"][0]["containerPort"]]


def test_egress_is_only_what_each_pod_needs() -> None:
    """The wallet reaches the database and the Stellar RPC (internet addresses, HTTPS)
    and DNS, nothing else: not the pool, not the cloud metadata endpoint, not a private
    address. The pool reaches the wallet too; the migration Job the database alone."""
    egress = _allowed(BASE, "egress")
    dns = {("dns", 53)}
    database = {("kale-pool-db", 5432)}
    rpc = {("public", 443)}
    assert egress["wallet-service"] == database | rpc | dns
    assert egress["pool-service"] == database | rpc | dns | {("wallet-service", 50052)}
    assert egress["kale-pool-migrate"] == database | dns
    assert egress["kale-pool-db"] == {
        ("kale-pool-db", 5432),
        ("kale-pool-db", 8000),
        ("anywhere", 443),  # the Kubernetes API, whose address is the cluster's
        ("anywhere", 6443),
        *dns,
    }
    assert _allowed(POOLER, "egress")["pooler-1"] == {("anywhere", 50051), *rpc, *dns}
    assert _allowed(POOLER, "ingress")["pooler-1"] == set()


# --- database credentials -----------------------------------------------------------


def test_each_process_connects_with_credentials_of_its_own() -> None:
    """The migrations run as the owner; each service as its own role (docs/database.md),
    never the owner's; no two workloads share a DATABASE_URL."""
    workloads = _workloads(_docs(BASE))
    used = {
        name: secret
        for name, workload in workloads.items()
        if (secret := _database_secret(workload)) is not None
    }
    assert used == DATABASE_SECRETS
    assert len(set(used.values())) == len(used)


def test_the_cluster_makes_the_roles_the_grants_name() -> None:
    """CloudNativePG creates each role the migrations grant to, its password from the
    operator's Secret, and that Secret is what the role's service connects with."""
    cluster = _of_kind(_docs(BASE), "Cluster")["kale-pool-db"]["spec"]
    managed = {r["name"]: r for r in cluster["managed"]["roles"]}
    assert set(managed) == {role.name for role in ROLES}
    for role in managed.values():
        assert role["ensure"] == "present" and role["login"] is True
        assert role["passwordSecret"]["name"] in OPERATOR_SECRETS
        for power in ("superuser", "createdb", "createrole", "replication", "bypassrls"):
            assert not role.get(power, False), (role["name"], power)
    assert managed[WALLET.name]["passwordSecret"]["name"] == DATABASE_SECRETS["wallet-service"]
    assert managed[POOL.name]["passwordSecret"]["name"] == DATABASE_SECRETS["pool-service"]
    assert cluster["bootstrap"]["initdb"]["owner"] not in managed  # the migrator is apart
    doc_text = DOC.read_text()
    for secret in ("kale-pool-db-wallet", "kale-pool-db-pool", "kale-pool-db-auditor"):
        assert f"`{secret}`" in doc_text, f"docs/deploy.md does not explain {secret}"


def test_the_migration_job_migrates_before_the_services_need_it() -> None:
    job = _of_kind(_docs(BASE), "Job")["kale-pool-migrate"]
    (container,) = _containers(job)
    assert container["command"] == ["kale-pool", "db", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"OnFailure", "Never"}
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert "migrate.yaml" in kustomization["resources"]


# --- backups --------------------------------------------------------------------------

#: The object store's credentials, the operator's Secret.
BACKUP_SECRET = "kale-pool-backup-s3"


def test_the_database_is_backed_up_on_a_schedule_to_an_object_store() -> None:
    """A ScheduledBackup of the real Cluster, by the method the Cluster configures, whose
    credentials come from a Secret the operator makes (and the docs explain)."""
    docs = _docs(BASE)
    clusters = _of_kind(docs, "Cluster")
    (scheduled,) = _of_kind(docs, "ScheduledBackup").values()
    spec = scheduled["spec"]
    assert spec["cluster"]["name"] in clusters
    assert spec["method"] == "barmanObjectStore"
    assert len(spec["schedule"].split()) == 6, "CloudNativePG's cron has seconds first"
    assert "backup.yaml" in yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    backup = clusters[spec["cluster"]["name"]]["spec"]["backup"]
    assert re.fullmatch(r"[1-9][0-9]*[dwm]", backup["retentionPolicy"])
    store = backup["barmanObjectStore"]
    assert "destinationPath" not in store, "the bucket is each overlay's"
    assert {ref["name"] for ref in store["s3Credentials"].values()} == {BACKUP_SECRET}
    assert BACKUP_SECRET in OPERATOR_SECRETS
    assert f"`{BACKUP_SECRET}`" in DOC.read_text()
    assert store["wal"]["compression"] and store["data"]["compression"]


def test_each_overlay_sends_its_backups_to_a_bucket_of_its_own() -> None:
    destinations: list[str] = []
    for overlay in OVERLAYS:
        patches = [
            d["spec"]["backup"]["barmanObjectStore"]
            for d in _docs(overlay)
            if d.get("kind") == "Cluster" and "backup" in d.get("spec", {})
        ]
        (store,) = patches
        assert store["destinationPath"].startswith("s3://REPLACE-ME"), overlay.name
        destinations.append(store["destinationPath"])
    assert len(set(destinations)) == len(OVERLAYS)
    assert "`destinationPath`" in DOC.read_text()


# --- overlays -------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_settings_load_for_its_network(
    overlay: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The base config with the overlay's patch is a complete configuration."""
    base = _of_kind(_docs(BASE), "ConfigMap")
    patch = _of_kind(_docs(overlay), "ConfigMap")["kale-pool-config"]["data"]
    env = {**base["kale-pool-config"]["data"], **patch, **base["pool-service-config"]["data"]}
    assert env["KALE_POOL_NETWORK"] == overlay.name
    placeholders = {k for k, v in env.items() if "REPLACE-ME" in v}
    assert placeholders, "each overlay leaves the operator's values as REPLACE-ME"
    doc_text = DOC.read_text()
    for name in placeholders:
        assert f"`{name}`" in doc_text, f"docs/deploy.md does not explain {name}"
    monkeypatch.chdir(tmp_path)  # no .env from the working directory
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"KALE_POOL_{name.upper()}", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.network.value == overlay.name
    assert settings.rpc_url and settings.farm_contract_id and settings.network_passphrase


RENDERED_DIRS = [*OVERLAYS, POOLER]


@functools.cache
def _rendered_once(directory: Path) -> tuple[Doc, ...]:
    return tuple(render(directory))


def _rendered(directory: Path) -> list[Doc]:
    """What the kustomization renders (a copy: tests may change it)."""
    return copy.deepcopy(list(_rendered_once(directory)))


@pytest.mark.parametrize("directory", RENDERED_DIRS, ids=lambda p: p.name)
def test_each_kustomization_renders(directory: Path) -> None:
    docs = _rendered(directory)
    for deployment in _of_kind(docs, "Deployment").values():
        assert deployment["metadata"]["namespace"] in {"kale-pool", "kale-pooler"}
        for container in _containers(deployment):
            assert container["image"].startswith("REPLACE-ME.example/kale-pool:")
    # Every object of the files it lists, no other (the overlays list the base).
    if directory in OVERLAYS:
        listed = [d for d in _docs(BASE) if d["kind"] != "Kustomization"]
    else:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        listed = [
            d
            for entry in kustomization["resources"]
            for d in yaml.safe_load_all((directory / entry).read_text())
            if d
        ]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert names == {(d["kind"], d["metadata"]["name"]) for d in listed}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", [*RENDERED_DIRS, BASE], ids=lambda p: p.name)
def test_the_fallback_renderer_renders_what_kubectl_renders(directory: Path) -> None:
    """Without kubectl the tests render with tests/kustomize.py: it must agree."""
    ours = {object_key(d): d for d in render_here(directory)}
    kubectl = {object_key(d): d for d in render_with_kubectl(directory)}
    assert set(ours) == set(kubectl)
    for name, doc in ours.items():
        assert doc == kubectl[name], name


#: The Kubernetes releases the manifests are valid for: the oldest we support (native
#: gRPC probes and `unhealthyPodEvictionPolicy` are GA there) and the newest whose
#: schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.utils.latest_version())


@functools.cache
def _custom_schema(kind: str, group: str) -> Doc | None:
    path = SCHEMAS / f"{kind.lower()}.{group}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _problems(doc: Doc) -> list[str]:
    """Why `doc` is not a valid object (nothing when it is): a custom resource against
    its schema in deploy/schemas/, anything else against Kubernetes' own, strictly (no
    field the API does not know)."""
    group = doc["apiVersion"].rpartition("/")[0]
    schema = _custom_schema(doc["kind"], group) if "." in group else None
    if schema is not None:
        validator = jsonschema.Draft7Validator(schema)
        return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"Kubernetes {version}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"no schema for {doc['apiVersion']} {doc['kind']} (deploy/schemas/)")
    return problems


@pytest.mark.parametrize("directory", RENDERED_DIRS, ids=lambda p: p.name)
def test_every_rendered_object_is_valid(directory: Path) -> None:
    docs = _rendered(directory)
    if directory == POOLER:  # applied in the pool's cluster, by hand
        request = (POOLER / "certificate-request.yaml").read_text()
        docs += [d for d in yaml.safe_load_all(request) if d]
    invalid = {"/".join(object_key(d)): p for d in docs if (p := _problems(d))}
    assert not invalid, invalid


def test_every_custom_resource_kind_has_a_schema_in_the_repository() -> None:
    kinds = {
        (d["kind"], d["apiVersion"].rpartition("/")[0])
        for directory in RENDERED_DIRS
        for d in _rendered(directory)
    }
    custom = {(kind, group) for kind, group in kinds if "." in group and "k8s.io" not in group}
    assert custom >= {
        ("Certificate", "cert-manager.io"),
        ("Issuer", "cert-manager.io"),
        ("Cluster", "postgresql.cnpg.io"),
        ("ScheduledBackup", "postgresql.cnpg.io"),
        ("ServiceMonitor", "monitoring.coreos.com"),
    }
    for kind, group in custom | {("CertificateRequest", "cert-manager.io")}:
        assert _custom_schema(kind, group) is not None, (kind, group)
    assert _custom_schema("PrometheusRule", "monitoring.coreos.com") is not None
    readme = (SCHEMAS / "README.md").read_text()
    for path in SCHEMAS.glob("*.json"):
        assert f"`{path.name}`" in readme, f"deploy/schemas/README.md does not name {path.name}"


def _first(docs: list[Doc], kind: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind)


@pytest.mark.parametrize(
    ("kind", "spoil"),
    [
        # a misspelt field, which a cluster would prune without a word
        ("Deployment", lambda d: d["spec"].update(replica=3)),
        # a gRPC probe's port is a number: a port's name is refused
        (
            "Deployment",
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].update(
                grpc={"port": "health"}
            ),
        ),
        ("PodDisruptionBudget", lambda d: d["spec"].update(maxUnavaliable=1)),
        ("HorizontalPodAutoscaler", lambda d: d["spec"].pop("maxReplicas")),
        ("Certificate", lambda d: d["spec"].update(commonname="pool-service")),
        ("Certificate", lambda d: d["spec"]["privateKey"].update(algorithm="DSA")),
        ("Cluster", lambda d: d["spec"].update(instances="three")),
        ("ScheduledBackup", lambda d: d["spec"].update(method="pg_dump")),
        ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(interval=30)),
        ("ServiceMonitor", lambda d: d["spec"].pop("selector")),
    ],
)
def test_validation_refuses_a_spoilt_object(kind: str, spoil: Any) -> None:
    """The validation can fail: each spoilt object is refused (and was valid before)."""
    doc = _first(_rendered(OVERLAYS[1]), kind)
    assert _problems(doc) == []
    spoil(doc)
    assert _problems(doc), f"a spoilt {kind} passed"


# --- the services' certificate loading against a mounted secret ----------------------


def test_services_load_certificates_from_a_mounted_secret_without_the_ca_key(
    tmp_path: Path,
) -> None:
    """The pod's certs/ holds ca.pem and the leaf pairs only, as cert-manager issues them."""
    issuer = DevPki(tmp_path / "issuer")
    identity = issuer.server(WALLET_SERVER)
    mounted = tmp_path / "certs"
    mounted.mkdir()
    (mounted / "ca.pem").write_bytes(issuer.ca_pem)
    (mounted / f"{WALLET_SERVER}.pem").write_bytes(identity.cert_pem)
    (mounted / f"{WALLET_SERVER}-key.pem").write_bytes(identity.key_pem)
    pki = DevPki(mounted)
    assert pki.server(WALLET_SERVER) == identity
    assert pki.ca_pem == issuer.ca_pem
    assert sorted(p.name for p in mounted.iterdir()) == [
        "ca.pem",
        f"{WALLET_SERVER}-key.pem",
        f"{WALLET_SERVER}.pem",
    ]


# --- the image ------------------------------------------------------------------------


def test_the_service_image_leaves_the_devnet_out() -> None:
    """The image's wheel is built from what the Containerfile copies: every package maturin
    ships except the development chain, which holds no place beside the wallet's keys."""
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["maturin"][
        "python-packages"
    ]
    copied: set[str] = set()
    for line in (DEPLOY / "Containerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--") for w in words):
            copied.update(source.rstrip("/") for source in words[1:-1])
    assert "kale_devnet" in shipped
    assert set(shipped) - copied == {"kale_devnet"}


# --- monitoring: the PrometheusRule and the Grafana dashboard --------------------------

_METRIC = re.compile(r"\bkalepool_[a-z0-9_]+")


def _exported_metric_names() -> set[str]:
    """Every series name the processes export: each module that defines metrics is
    imported, and the default registry's families spelled out as Prometheus shows them."""
    import importlib

    import prometheus_client

    for module in (
        "kalepool.chain.metrics",
        "kalepool.db.health",
        "kalepool.grpc_server",
        "kalepool.limits",
        "pool_service.metrics",
        "pooler_agent.metrics",
        "wallet_service.policy",
    ):
        importlib.import_module(module)
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
        "summary": ("_sum", "_count", ""),
    }
    names: set[str] = set()
    for family in prometheus_client.REGISTRY.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def _alert_rules() -> list[dict[str, Any]]:
    [rule] = [d for d in _docs(BASE) if d["kind"] == "PrometheusRule"]
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_every_alert_expression_uses_metrics_the_code_exports() -> None:
    exported = _exported_metric_names()
    for rule in _alert_rules():
        used = set(_METRIC.findall(rule["expr"]))
        assert used, f"{rule['alert']}: no kale-pool metric in its expression"
        assert used <= exported, f"{rule['alert']}: not exported: {sorted(used - exported)}"


def test_the_prometheus_rules_are_the_alert_engines_rules() -> None:
    from pool_service.alerts import CONTRACT_RULE, DATABASE_RULE, STORED_RULES
    from wallet_service.policy import ALERT_RULE as PAYOUT_POLICY

    shipped = {rule["labels"]["rule"] for rule in _alert_rules()}
    assert shipped == {*STORED_RULES, DATABASE_RULE, CONTRACT_RULE, PAYOUT_POLICY}
    assert "alerts.yaml" in yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]


def test_every_dashboard_panel_queries_metrics_the_code_exports() -> None:
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "kale-pool.json").read_text())
    exported = _exported_metric_names()
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used = set(_METRIC.findall(target["expr"]))
            assert used, f"panel {panel['title']!r}: no kale-pool metric"
            assert used <= exported, f"panel {panel['title']!r}: not exported: {used - exported}"
