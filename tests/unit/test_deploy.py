"""deploy/: every systemd unit and Kubernetes manifest is checked offline.

- systemd: ``systemd-analyze verify`` on every template unit (through an
  instance name, with ExecStart pointed at this venv's real ``agentic-payments``
  script), an exposure score from ``systemd-analyze security --offline``, and a
  structural check of what the units promise (Type=notify, watchdog, restart
  limits, hardening, EnvironmentFile, credentials).
- Kubernetes: ``kubernetes-validate`` (strict, bundled schemas, no cluster) on
  every manifest, and a structural check: one StatefulSet per kind (stable pod
  names = worker ids = NATS user names), each pod's own NATS credentials,
  probes, resources, PDB, RBAC for recovery, the NetworkPolicies (workers reach
  only NATS, the collector and DNS; NATS admits only the workers), and the NATS
  Helm values asking for a 3-node JetStream cluster on file storage with the
  rendered users included.

Kinds are enumerated from the files: a kind with a unit but no manifest (or
the reverse) fails.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus import liveness
from bus.permissions import ROLES, inbox_prefix, permissions
from bus.subjects import Subjects, check_token
from tests.helpers import ROOT
from workers.cli.main import build_parser, main

DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "k8s"
INSTALLED_BIN = "/opt/agentic-payments/venv/bin/agentic-payments"
EXPECTED_KINDS = {"verifier", "tally", "keys", "trust", "authority", "anomaly", "recovery"}
UNIT_RE = re.compile(r"^agentic-payments-([a-z]+)@\.service$")


def unit_kinds() -> list[str]:
    return sorted(m.group(1) for p in SYSTEMD.iterdir() if (m := UNIT_RE.match(p.name)))


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_documents() -> list[dict[str, Any]]:
    return [d for p in manifest_files() for d in documents(p)]


def workloads() -> dict[str, dict[str, Any]]:
    """kind label -> its Deployment/StatefulSet."""
    out: dict[str, dict[str, Any]] = {}
    for doc in all_documents():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            kind = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            assert kind not in out, f"two workloads for {kind}"
            out[kind] = doc
    return out


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered (key, value) lists (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"assignment outside a section: {line}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def worker_kinds_in_cli() -> set[str]:
    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    worker = top.choices["worker"]
    sub = next(a for a in worker._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


# ------------------------------------------------------------------ the kinds
def test_every_kind_has_a_unit_and_a_manifest() -> None:
    assert set(unit_kinds()) == EXPECTED_KINDS
    assert set(workloads()) == EXPECTED_KINDS
    assert {p.stem for p in manifest_files()} >= EXPECTED_KINDS


# ------------------------------------------------------------------ systemd
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _instance_copies(tmp_path: Path, kinds: list[str]) -> list[Path]:
    """x@.service -> x@test.service, ExecStart pointed at this venv's real script."""
    real_bin = Path(sys.executable).parent / "agentic-payments"
    assert real_bin.exists(), f"{real_bin} missing: pip install -e . first"
    units = []
    for kind in kinds:
        text = (SYSTEMD / f"agentic-payments-{kind}@.service").read_text()
        assert INSTALLED_BIN in text
        unit = tmp_path / f"agentic-payments-{kind}@test.service"
        unit.write_text(text.replace(INSTALLED_BIN, str(real_bin)))
        units.append(unit)
    shutil.copy(SYSTEMD / "agentic-payments.target", tmp_path / "agentic-payments.target")
    return units


def _verify(tmp_path: Path, units: list[Path]) -> list[str]:
    """Problems systemd-analyze verify reports about these units (empty: clean).

    verify exits 0 on unknown keys and unparsable values and only warns on
    stderr, so every stderr line naming one of our files counts as a problem.
    """
    names = [u.name for u in units] + ["agentic-payments.target"]
    proc = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            *[str(u) for u in units],
            str(tmp_path / "agentic-payments.target"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if str(tmp_path) in line or any(n in line for n in names)
    ]
    if proc.returncode != 0:
        problems.append(f"exit {proc.returncode}: {proc.stderr.strip()}")
    return problems


@needs_systemd_analyze
def test_systemd_analyze_verify_every_unit(tmp_path: Path) -> None:
    units = _instance_copies(tmp_path, unit_kinds())
    assert _verify(tmp_path, units) == []


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("find", "replace", "expected"),
    [
        ("\nNoNewPrivileges=yes", "\nNoNewPrivilegez=yes", "Unknown key"),
        ("\nType=notify", "\nType=notifyy", "Failed to parse service type"),
        ("\nRestart=on-failure", "\nRestart=sometimes", "Failed to parse"),
    ],
)
def test_systemd_verify_check_catches_mistakes(
    tmp_path: Path, find: str, replace: str, expected: str
) -> None:
    """The checker above is not blind: a broken copy of a unit is reported."""
    (unit,) = _instance_copies(tmp_path, ["tally"])
    unit.write_text(unit.read_text().replace(find, replace, 1))
    problems = _verify(tmp_path, [unit])
    assert any(expected in p for p in problems), problems


@needs_systemd_analyze
def test_systemd_verify_reports_missing_binary(tmp_path: Path) -> None:
    unit = tmp_path / "agentic-payments-tally@test.service"
    shutil.copy(SYSTEMD / "agentic-payments-tally@.service", unit)
    shutil.copy(SYSTEMD / "agentic-payments.target", tmp_path / "agentic-payments.target")
    if Path(INSTALLED_BIN).exists():
        pytest.skip(f"{INSTALLED_BIN} is installed on this machine")
    assert any("not executable" in p for p in _verify(tmp_path, [unit]))


@needs_systemd_analyze
@pytest.mark.parametrize("kind", sorted(EXPECTED_KINDS))
def test_systemd_security_exposure_is_low(tmp_path: Path, kind: str) -> None:
    (unit,) = _instance_copies(tmp_path, [kind])
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    if match is None and "offline" in proc.stderr:
        pytest.skip("this systemd-analyze has no --offline security mode")
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout  # 0 best .. 10 worst; "OK" is < 4


@pytest.mark.parametrize("kind", sorted(EXPECTED_KINDS))
def test_systemd_unit_promises(kind: str) -> None:
    unit = parse_unit((SYSTEMD / f"agentic-payments-{kind}@.service").read_text())
    u, s, i = unit["Unit"], unit["Service"], unit["Install"]
    one = {k: v[-1] for k in {k for k, _ in s} if (v := values(s, k))}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["WatchdogSec"].rstrip("s").isdigit() and int(one["WatchdogSec"].rstrip("s")) > 0
    assert one["Restart"] == "on-failure"
    assert "78" in one["RestartPreventExitStatus"].split()
    assert values(u, "StartLimitBurst") and values(u, "StartLimitIntervalSec")
    assert one["ExecStart"].split()[:5] == [INSTALLED_BIN, "worker", kind, "--id", "%i"]
    assert "/etc/agentic-payments/agentic-payments.env" in values(s, "EnvironmentFile")
    for key, expected in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictSUIDSGID", "yes"),
        ("UMask", "0077"),
    ]:
        assert one.get(key) == expected, f"{key}={one.get(key)!r}"
    env = dict(v.split("=", 1) for v in values(s, "Environment"))
    assert env["AP_DATA_DIR"] == f"%S/agentic-payments/{kind}-%i"
    assert one["StateDirectory"] == f"agentic-payments/{kind}-%i"
    assert env["AP_LIVENESS_DIR"] == f"%t/agentic-payments/{kind}-%i"
    assert one["RuntimeDirectory"] == f"agentic-payments/{kind}-%i"
    assert env["AP_WORKER_KIND"] == kind and env["AP_WORKER_ID"] == "%i"
    assert "agentic-payments.target" in values(i, "WantedBy")
    if kind == "keys":
        cred = values(s, "LoadCredential")
        assert cred and cred[0].startswith("master.key:/etc/agentic-payments/credentials/")
        assert env["AP_MASTER_KEY_FILE"] == "%d/master.key"
    if kind == "recovery":
        assert one["User"] == "agentic-payments-recovery"
        assert "AF_UNIX" in one["RestrictAddressFamilies"].split()  # D-Bus to systemd


def test_polkit_rule_allows_recovery_only_restart() -> None:
    rule = (SYSTEMD / "polkit" / "50-agentic-payments-recovery.rules").read_text()
    assert 'subject.user == "agentic-payments-recovery"' in rule
    assert '"org.freedesktop.systemd1.manage-units"' in rule
    assert 'verb == "restart"' in rule
    pattern = re.search(r"/(\^agentic-payments-.*\$)/", rule)
    assert pattern is not None
    unit_re = re.compile(pattern.group(1).replace("\\.", r"\."))
    assert unit_re.match("agentic-payments-verifier@v1.service")
    assert not unit_re.match("sshd.service")
    assert not unit_re.match("agentic-payments-verifier@v1.service; rm")


def test_environment_file_is_plain_assignments() -> None:
    for raw in (SYSTEMD / "agentic-payments.env").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, _ = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), line


@pytest.mark.parametrize("kind", sorted(EXPECTED_KINDS))
def test_unit_and_manifest_command_lines_parse(kind: str) -> None:
    """The worker command the unit and the manifest run is one the CLI accepts."""
    if kind not in worker_kinds_in_cli():
        pytest.skip(f"worker kind {kind!r} is not in this branch's CLI yet")
    exec_start = values(
        parse_unit((SYSTEMD / f"agentic-payments-{kind}@.service").read_text())["Service"],
        "ExecStart",
    )[0]
    argv = [a for a in exec_start.split()[1:] if not a.startswith("$")]
    build_parser().parse_args([a.replace("%i", "i1") for a in argv])
    container = workloads()[kind]["spec"]["template"]["spec"]["containers"][0]
    build_parser().parse_args([a.replace("$(AP_WORKER_ID)", "pod-1") for a in container["args"]])


# ------------------------------------------------------------------ Kubernetes
def test_kubernetes_validate_every_manifest() -> None:
    import kubernetes_validate

    checked = 0
    for path in [
        *manifest_files(),
        *sorted((K8S / "examples").glob("*.yaml")),
        *sorted((K8S / "nats").glob("*.yaml")),
    ]:
        for doc in documents(path):
            kubernetes_validate.validate(doc, "1.30", strict=True)
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            checked += 1
    assert checked >= len(EXPECTED_KINDS) + 5


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenessProb={}),
        lambda d: d["spec"].update(replicas="two"),
        lambda d: (
            d["spec"]["template"]["spec"]["containers"][0].pop("image")
            and d["spec"]["template"]["spec"]["containers"][0].pop("name")
        ),
    ],
)
def test_kubernetes_validate_catches_mistakes(mutate: Any) -> None:
    import kubernetes_validate

    doc = workloads()["tally"]
    mutate(doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize("kind", sorted(EXPECTED_KINDS))
def test_workload_shape(kind: str) -> None:
    w = workloads()[kind]
    # stable pod names (kind-0, kind-1 ...): the worker id, the NATS user, the member record
    assert w["kind"] == "StatefulSet" and w["metadata"]["name"] == kind
    service = next(
        d
        for d in all_documents()
        if d["kind"] == "Service" and d["metadata"]["name"] == w["spec"]["serviceName"]
    )
    assert service["spec"]["clusterIP"] == "None" and "ports" not in service["spec"]
    assert w["metadata"]["namespace"] == "agentic-payments"
    template = w["spec"]["template"]
    selector = w["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["terminationGracePeriodSeconds"] >= 30  # drain window
    for c in _containers(w):
        for what in ("requests", "limits"):
            assert {"cpu", "memory"} <= c["resources"][what].keys(), (c["name"], what)
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
    main_c = pod["containers"][0]
    assert main_c["command"] == ["agentic-payments"]
    assert main_c["args"][:4] == ["worker", kind, "--id", "$(AP_WORKER_ID)"]
    env = {e["name"]: e for e in main_c["env"]}
    assert env["AP_WORKER_KIND"]["value"] == kind
    assert env["AP_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert [e["name"] for e in main_c["env"]].index("AP_WORKER_ID") < [
        e["name"] for e in main_c["env"]
    ].index("OTEL_RESOURCE_ATTRIBUTES")
    assert env["AP_LIVENESS_DIR"]["value"] == "/run/agentic-payments"
    assert main_c["envFrom"] == [{"configMapRef": {"name": "agentic-payments-config"}}]
    # liveness: local file, no NATS; readiness: the NATS status request
    live = main_c["livenessProbe"]["exec"]["command"]
    ready = main_c["readinessProbe"]["exec"]["command"]
    assert live == ["agentic-payments", "check", "--liveness"]
    assert ready[:2] == ["agentic-payments", "check"] and "--liveness" not in ready
    assert main_c["startupProbe"]["exec"]["command"] == live
    assert main_c["readinessProbe"]["timeoutSeconds"] > int(ready[ready.index("--timeout") + 1])
    mounts = {m["mountPath"]: m["name"] for m in main_c["volumeMounts"]}
    assert mounts["/run/agentic-payments"] == "run" and "/var/lib/agentic-payments" in mounts
    # only the recovery worker talks to the Kubernetes API
    assert pod["automountServiceAccountToken"] is (kind == "recovery")


def test_verifiers_keep_their_identity_and_have_a_pdb() -> None:
    sts = workloads()["verifier"]
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {
        m["name"]: m["mountPath"]
        for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert mounts["data"] == "/var/lib/agentic-payments" and "data" in claims
    assert sts["spec"]["replicas"] >= 4  # n >= 3f + 1 with f = 1
    service = next(
        d
        for d in all_documents()
        if d["kind"] == "Service" and d["metadata"]["name"] == sts["spec"]["serviceName"]
    )
    assert service["spec"]["clusterIP"] == "None"
    pdbs = [d for d in all_documents() if d["kind"] == "PodDisruptionBudget"]
    verifier_pdb = [
        p
        for p in pdbs
        if p["spec"]["selector"]["matchLabels"].items()
        <= sts["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(verifier_pdb) == 1
    # a disruption must leave a 2/3 quorum of the pool: n - maxUnavailable >= ceil(2n/3)
    n = sts["spec"]["replicas"]
    assert n - verifier_pdb[0]["spec"]["maxUnavailable"] >= -(-2 * n // 3)


def test_recovery_rbac_is_pods_in_its_namespace_only() -> None:
    docs = all_documents()
    recovery = workloads()["recovery"]
    sa_name = recovery["spec"]["template"]["spec"]["serviceAccountName"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == sa_name for d in docs)
    assert not any(d["kind"] in ("ClusterRole", "ClusterRoleBinding") for d in docs)
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa_name, "namespace": "agentic-payments"}
    ]
    role = next(
        d
        for d in docs
        if d["kind"] == "Role" and d["metadata"]["name"] == binding["roleRef"]["name"]
    )
    assert role["metadata"]["namespace"] == "agentic-payments"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "delete"]}
    ]
    env = {
        e["name"]: e.get("value")
        for e in recovery["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["AP_RECOVERY_BACKEND"] == "kubernetes"


def test_keys_and_anomaly_get_their_secrets() -> None:
    examples = {
        d["metadata"]["name"]: d for d in documents(K8S / "examples" / "secrets.example.yaml")
    }
    for kind, secret, filename in [
        ("keys", "agentic-payments-keys-master", "master.key"),
        ("anomaly", "agentic-payments-anomaly-key", "anomaly.key"),
    ]:
        pod = workloads()[kind]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["secret"]["secret"]["secretName"] == secret
        assert filename in examples[secret]["stringData"]
        init = pod["initContainers"][0]
        assert (
            f"-m 0600 /etc/agentic-payments/secret/{filename} "
            f"/run/agentic-payments/secrets/{filename}" in init["command"][-1]
        )
    keys_env = {
        e["name"]: e.get("value")
        for e in workloads()["keys"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert keys_env["AP_MASTER_KEY_FILE"] == "/run/agentic-payments/secrets/master.key"


def test_configmap_and_kustomization() -> None:
    docs = all_documents()
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["metadata"]["name"] == "agentic-payments-config"
    assert config["data"]["NATS_URL"] == "nats://nats.nats.svc:4222"
    assert all(isinstance(v, str) for v in config["data"].values())
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files())
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_nats_helm_values_ask_for_a_3_node_jetstream_cluster() -> None:
    values_ = yaml.safe_load((K8S / "helm" / "nats-values.yaml").read_text())
    config = values_["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    js = config["jetstream"]
    assert js["enabled"] is True
    assert js["fileStore"]["enabled"] is True and js["fileStore"]["pvc"]["enabled"] is True
    assert js["memoryStore"]["enabled"] is False
    assert values_["podDisruptionBudget"]["enabled"] is True
    # the per-worker users (nats-config --auth nkey) are included, so no anonymous access
    assert config["merge"] == {"00$include": "auth.conf"}


# ------------------------------------------------------------------ NATS credentials, ids
SEED_FILE = "/run/agentic-payments/secrets/nats.nk"


def worker_ids(kind: str) -> list[str]:
    """The pod names of a kind's StatefulSet: its worker ids and NATS user names."""
    w = workloads()[kind]
    return [f"{w['metadata']['name']}-{i}" for i in range(w["spec"]["replicas"])]


@pytest.mark.parametrize("kind", sorted(EXPECTED_KINDS))
def test_every_worker_has_its_own_nats_credentials(kind: str) -> None:
    pod = workloads()[kind]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    sources = volumes["nats-credentials"]["projected"]["sources"]
    # one Secret per worker (named after its pod), each projected under the worker's id
    assert [s["secret"]["name"] for s in sources] == [
        f"agentic-payments-nats-{wid}" for wid in worker_ids(kind)
    ]
    assert [s["secret"]["items"] for s in sources] == [
        [{"key": "nats.nk", "path": f"{wid}.nk"}] for wid in worker_ids(kind)
    ]
    assert all("optional" not in s["secret"] for s in sources)  # a missing one fails closed
    init = next(c for c in pod["initContainers"] if c["name"] == "nats-credentials")
    assert init["command"][-1] == (
        "install -D -m 0600 /etc/agentic-payments/nats/$(AP_WORKER_ID).nk " + SEED_FILE
    )
    init_env = {e["name"]: e for e in init["env"]}
    assert init_env["AP_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert {m["name"] for m in init["volumeMounts"]} == {"nats-credentials", "run"}
    main_c = pod["containers"][0]
    # the worker itself never mounts the other workers' seeds
    assert "nats-credentials" not in {m["name"] for m in main_c["volumeMounts"]}
    names = [e["name"] for e in main_c["env"]]
    env = {e["name"]: e.get("value") for e in main_c["env"]}
    assert env["NATS_NKEY_SEED"] == SEED_FILE
    assert env["NATS_INBOX_PREFIX"] == "_INBOX.$(AP_WORKER_ID)"
    assert names.index("AP_WORKER_ID") < names.index("NATS_INBOX_PREFIX")  # $(..) expands
    assert "NATS_USER" not in env and "NATS_PASSWORD" not in env


@pytest.mark.parametrize("kind", sorted(EXPECTED_KINDS))
def test_worker_ids_are_valid_nats_users_of_their_role(kind: str) -> None:
    """What 'nats-config --user KIND:ID' renders for each pod: a valid user of the role
    named like the kind, whose inbox the manifests' NATS_INBOX_PREFIX names."""
    assert kind in ROLES
    for wid in worker_ids(kind):
        check_token(wid, "worker id")
        perms = permissions(kind, wid, Subjects("ap"))
        assert f"{inbox_prefix(wid)}.>" in perms.subscribe
        assert inbox_prefix(wid) == "_INBOX.$(AP_WORKER_ID)".replace("$(AP_WORKER_ID)", wid)


# ------------------------------------------------------------------ network policies
def policies(path: Path) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents(path) if d["kind"] == "NetworkPolicy"}


def ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for p in rule["ports"]}


def test_workers_are_denied_everything_but_nats_otlp_and_dns() -> None:
    pols = policies(K8S / "networkpolicy.yaml")
    deny = pols["default-deny"]["spec"]
    assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny and "egress" not in deny
    # no policy admits any inbound connection to a worker (probes are exec)
    assert not any(p["spec"].get("ingress") for p in pols.values())
    egress = pols["workers-egress"]["spec"]
    assert egress["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "agentic-payments"}
    for kind in EXPECTED_KINDS:
        labels = workloads()[kind]["spec"]["template"]["metadata"]["labels"]
        assert egress["podSelector"]["matchLabels"].items() <= labels.items()
    by_namespace = {
        rule["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]: rule
        for rule in egress["egress"]
    }
    assert set(by_namespace) == {"nats", "observability", "kube-system"}
    assert all(len(rule["to"]) == 1 and "podSelector" in rule["to"][0] for rule in egress["egress"])
    # the ConfigMap's NATS_URL and OTLP endpoint are what the policy lets through
    config = next(d for d in all_documents() if d["kind"] == "ConfigMap")["data"]
    nats_host, nats_port = config["NATS_URL"].removeprefix("nats://").split(":")
    assert nats_host.split(".")[1] == "nats" and ("TCP", int(nats_port)) in ports(
        by_namespace["nats"]
    )
    assert ports(by_namespace["nats"]) == {("TCP", 4222)}
    otlp = config["OTEL_EXPORTER_OTLP_ENDPOINT"].removeprefix("http://")
    otlp_host, otlp_port = otlp.split(":")
    assert otlp_host.split(".")[1] == "observability"
    assert ("TCP", int(otlp_port)) in ports(by_namespace["observability"])
    assert ports(by_namespace["observability"]) == {("TCP", 4317), ("TCP", 4318)}
    assert ports(by_namespace["kube-system"]) == {("UDP", 53), ("TCP", 53)}
    # only the recovery worker reaches the Kubernetes API
    api = pols["recovery-kubernetes-api"]["spec"]
    assert api["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "recovery"
    assert [ports(rule) for rule in api["egress"]] == [{("TCP", 443), ("TCP", 6443)}]
    assert set(pols) == {"default-deny", "workers-egress", "recovery-kubernetes-api"}


def test_nats_admits_only_the_workers_and_labelled_clients() -> None:
    (policy,) = policies(K8S / "nats" / "networkpolicy.yaml").values()
    assert policy["metadata"]["namespace"] == "nats"
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    clients, routes = spec["ingress"]
    assert ports(clients) == {("TCP", 4222)}
    workers, labelled = clients["from"]
    assert workers["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "agentic-payments"
    }
    assert workers["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "agentic-payments"
    }
    assert labelled["podSelector"]["matchLabels"] == {"agentic-payments.io/nats-client": "true"}
    assert routes["from"] == [{"podSelector": spec["podSelector"]}]
    assert ports(routes) == {("TCP", 6222), ("TCP", 4222)}


# ------------------------------------------------------------------ the probe command
def test_liveness_probe_command_as_the_manifests_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``agentic-payments check --liveness`` with kind/id/dir from the pod env."""
    monkeypatch.setenv("AP_WORKER_KIND", "tally")
    monkeypatch.setenv("AP_WORKER_ID", "tally-5d8f7-abcde")
    monkeypatch.setenv("AP_LIVENESS_DIR", str(tmp_path))
    path = tmp_path / "tally-tally-5d8f7-abcde.alive"
    assert main(["check", "--liveness"]) == 1
    assert "no liveness file" in capsys.readouterr().out
    record = liveness.LivenessRecord(
        kind="tally", worker_id="tally-5d8f7-abcde", pid=1, ts=time.time(), ttl_s=16.0
    )
    liveness.write(path, record)
    assert main(["check", "--liveness"]) == 0
    assert main(["check", "--liveness", "--json"]) == 0
    assert '"alive": true' in capsys.readouterr().out
    liveness.write(
        path,
        liveness.LivenessRecord(
            kind="tally", worker_id="tally-5d8f7-abcde", pid=1, ts=time.time() - 60, ttl_s=16.0
        ),
    )
    assert main(["check", "--liveness"]) == 1
    assert "stale" in capsys.readouterr().out
    assert main(["check", "--liveness", "--max-age", "120"]) == 0
    monkeypatch.delenv("AP_WORKER_ID")
    assert main(["check", "--liveness"]) == 78  # no id anywhere: configuration error
