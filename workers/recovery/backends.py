"""Respawn backends of the recovery worker: local supervisor, systemd, Kubernetes.

Each backend turns "worker KIND/ID of generation G on host H went silent"
into a respawn and reports a ``Respawned`` (or raises ``RespawnFailed``):

* ``local`` — a RestartRequest over NATS to the supervisor of ``agentic-payments
  up`` on ``{prefix}.supervisor.{name}.restart``; ``name`` is fixed
  (``--supervisor``) or derived from the heartbeat's host (``host_token``), the
  name ``up`` uses by default. The reply carries the new pid and generation.
* ``systemd`` — ``systemctl [--user] restart agentic-payments-KIND@ID.service``
  (the template units of deploy/systemd). ``restart`` also kills a hung process.
  Runs on the worker's host: run one recovery worker per host with
  ``--only-host`` (its own host name) when workers are spread over hosts.
* ``kubernetes`` — ``DELETE /api/v1/namespaces/NS/pods/POD`` with the pod's
  service-account token and CA; the Deployment's ReplicaSet starts a new pod.
  The pod name is the heartbeat's host (a pod's host name is its name). Needs
  RBAC ``delete`` on ``pods`` in NS.

The command and request construction are pure functions (tested as tables);
the I/O is a subprocess or one HTTPS request in a thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nats.aio.client import Client

from bus.call import raise_for_error, send_request
from bus.subjects import Subjects, check_token
from schemas.errors import CodecError, ConfigError, RemoteError, RespawnFailed, TransportError
from schemas.messages import decode_reply
from schemas.recovery import RestartCode, RestartReply, RestartRequest

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_UNIT = "agentic-payments-{kind}@{worker_id}.service"


@dataclass(frozen=True)
class Target:
    kind: str
    worker_id: str
    generation: int
    host: str
    pid: int
    reason: str = ""


@dataclass(frozen=True)
class Respawned:
    detail: str
    new_generation: int = 0  # 0: unknown until its first heartbeat
    pid: int = 0


class Backend(Protocol):
    name: str

    async def respawn(self, target: Target) -> Respawned: ...


# ---------------------------------------------------------------- pure helpers
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def host_token(host: str) -> str:
    """A host name as one subject token: the first label, other characters as '_'."""
    label = host.split(".", 1)[0] or "local"
    return _NOT_TOKEN.sub("_", label)[:64]


def systemd_unit(kind: str, worker_id: str, template: str = DEFAULT_UNIT) -> str:
    check_token(kind, "worker kind")
    check_token(worker_id, "worker id")
    return template.format(kind=kind, worker_id=worker_id)


def systemctl_command(systemctl: str, unit: str, *, user: bool = False) -> list[str]:
    return [systemctl, *(["--user"] if user else []), "restart", "--no-block", unit]


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def pod_delete_request(
    api: str, namespace: str, pod: str, token: str
) -> tuple[str, str, dict[str, str]]:
    """(method, url, headers) deleting ``pod``; names are checked as DNS labels/subdomains."""
    if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise ConfigError(f"namespace {namespace!r} is not a DNS label")
    if len(pod) > 253 or not all(_DNS_LABEL.match(p) for p in pod.split(".")):
        raise RespawnFailed(f"pod name {pod!r} (from the heartbeat host) is not a DNS name")
    url = f"{api.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{pod}"
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "Content-Type": "application/json",
    }
    return "DELETE", url, headers


# ---------------------------------------------------------------- local supervisor
class LocalBackend:
    name = "local"

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        *,
        supervisor: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.supervisor = supervisor
        self.timeout = timeout

    def subject_for(self, target: Target) -> str:
        return self.subjects.supervisor_restart(self.supervisor or host_token(target.host))

    async def respawn(self, target: Target) -> Respawned:
        subject = self.subject_for(target)
        request = RestartRequest(
            kind=target.kind,
            worker_id=target.worker_id,
            dead_generation=target.generation,
            reason=target.reason[:256],
        )
        try:  # sent once: the recovery worker's retry policy decides when to try again
            msg = await send_request(
                self.nc,
                subject,
                request.encode(),
                timeout=self.timeout,
                service="supervisor",
                attempts=1,
            )
            reply = raise_for_error(decode_reply(msg.data, RestartReply))
        except RemoteError as err:
            raise RespawnFailed(
                f"supervisor refused the request [{err.code}]: {err.message}"
            ) from None
        except CodecError as exc:
            raise RespawnFailed(f"bad supervisor reply [{exc.code}]: {exc}") from None
        except TransportError as exc:  # no responders, timeout, connection trouble
            raise RespawnFailed(
                f"no supervisor answered on {subject}: {exc.__class__.__name__}"
            ) from None
        if reply.code == RestartCode.ALIVE:
            raise WorkerAlive(f"supervisor: {reply.code} {reply.message}".strip())
        if reply.code == RestartCode.CONFIG_EXIT:
            raise WorkerMisconfigured(f"supervisor: {reply.code} {reply.message}".strip())
        if not reply.ok:
            raise RespawnFailed(f"supervisor: {reply.code} {reply.message}".strip())
        return Respawned(
            detail=f"{reply.code} by supervisor on {subject}",
            new_generation=reply.generation,
            pid=reply.pid,
        )


class WorkerAlive(RespawnFailed):
    """The backend saw the worker making progress locally: the silence is the bus's."""


class WorkerMisconfigured(RespawnFailed):
    """The worker exited with a configuration error: retrying cannot help."""


# ---------------------------------------------------------------- systemd
class SystemdBackend:
    name = "systemd"

    def __init__(
        self,
        *,
        systemctl: str = "systemctl",
        user: bool = False,
        unit_template: str = DEFAULT_UNIT,
        timeout: float = 30.0,
    ) -> None:
        self.systemctl = systemctl
        self.user = user
        self.unit_template = unit_template
        self.timeout = timeout

    async def respawn(self, target: Target) -> Respawned:
        unit = systemd_unit(target.kind, target.worker_id, self.unit_template)
        cmd = systemctl_command(self.systemctl, unit, user=self.user)
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            raise RespawnFailed(f"cannot run {self.systemctl}: {exc}") from None
        try:
            async with asyncio.timeout(self.timeout):  # not wait_for (bpo-42130)
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            raise RespawnFailed(f"{' '.join(cmd)} did not finish in {self.timeout}s") from None
        if proc.returncode != 0:
            text = (err or out).decode(errors="replace").strip()[:300]
            raise RespawnFailed(f"{' '.join(cmd)} exited {proc.returncode}: {text}")
        return Respawned(detail=" ".join(cmd[1:]))


# ---------------------------------------------------------------- Kubernetes
class KubernetesBackend:
    name = "kubernetes"

    def __init__(
        self,
        *,
        api: str | None = None,
        namespace: str | None = None,
        token_file: Path | None = None,
        ca_file: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        if api is None:
            host = os.environ.get("KUBERNETES_SERVICE_HOST")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise ConfigError(
                    "not in a Kubernetes pod (KUBERNETES_SERVICE_HOST unset); give --k8s-api"
                )
            api = f"https://{host}:{port}"
        self.api = api
        self.token_file = token_file or SA_DIR / "token"
        self.ca_file = ca_file if ca_file is not None else SA_DIR / "ca.crt"
        if namespace is None:
            ns_file = SA_DIR / "namespace"
            namespace = ns_file.read_text().strip() if ns_file.exists() else "default"
        self.namespace = namespace
        self.timeout = timeout
        pod_delete_request(self.api, self.namespace, "probe", "")  # validates the namespace

    def _context(self) -> ssl.SSLContext | None:
        if not self.api.startswith("https://"):
            return None
        return ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file.exists() else None
        )

    def _delete(self, pod: str) -> tuple[int, str]:
        # The token is re-read each time: projected service-account tokens rotate.
        token = self.token_file.read_text().strip()
        method, url, headers = pod_delete_request(self.api, self.namespace, pod, token)
        body = json.dumps(
            {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
        ).encode()
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._context()) as resp:
                return resp.status, resp.read(2048).decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(2048).decode(errors="replace")

    async def respawn(self, target: Target) -> Respawned:
        try:
            status, text = await asyncio.to_thread(self._delete, target.host)
        except OSError as exc:
            raise RespawnFailed(f"Kubernetes API {self.api}: {exc}") from None
        if status == 404:  # already gone: its ReplicaSet is starting a new one
            return Respawned(detail=f"pod {self.namespace}/{target.host} was already deleted")
        if status not in (200, 202):
            raise RespawnFailed(
                f"DELETE pod {self.namespace}/{target.host}: HTTP {status} {text[:200]}"
            )
        return Respawned(detail=f"deleted pod {self.namespace}/{target.host} (HTTP {status})")
