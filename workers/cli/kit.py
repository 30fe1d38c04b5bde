"""The options kit every ``agentic-payments`` command module builds on.

One home for what each command would otherwise write again, slightly differently:
argparse types, the NATS options every command takes, the options every worker
process takes, turning parsed arguments into ``NatsConfig`` and ``RuntimeConfig``,
printing a result for humans or as ``--json``, a short-lived drained connection,
and the exit codes. Command modules (workers/cli/*.py, workers/*/cli.py) import
it at module top; it imports no command module, so there is no cycle to dodge.

Defaults live in one place, the options dataclass (``RuntimeConfig`` here,
``TallyOptions``, ``RetryPolicy``, ... in the worker packages): parsers read them
with ``field_default`` and show them with ``%(default)s`` in their help.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from bus.client import DEFAULT_POOL_GRACE_S
from bus.config import DEFAULT_NATS_URL, NatsConfig
from bus.connection import connect
from bus.runtime import EXIT_CONFIG, EXIT_CONNECT, EXIT_CRASH, RuntimeConfig, default_data_dir
from bus.subjects import DEFAULT_PREFIX, check_token
from schemas.errors import ConfigError
from schemas.quorum import DEFAULT_THRESHOLD, MIN_POOL, parse_threshold

# ---------------------------------------------------------------- exit codes
EXIT_OK = 0
#: decided but not VALID, refused, not found, unhealthy: the command ran, the answer is no
EXIT_NOT_VALID = 1
#: argparse's own code for a usage error
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: How long commands that submit requests for consensus wait, per attempt.
ATTEMPT_TIMEOUT_S = 10.0

__all__ = [
    "ATTEMPT_TIMEOUT_S",
    "EXIT_CONFIG",
    "EXIT_CONNECT",
    "EXIT_CRASH",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_VALID",
    "EXIT_OK",
    "EXIT_USAGE",
    "attempt_timeout_option",
    "client_options",
    "client_threshold",
    "connection",
    "field_default",
    "int_at_least",
    "json_option",
    "message_bytes",
    "min_pool_option",
    "nats_config",
    "nats_options",
    "non_negative",
    "output",
    "pool_grace_option",
    "positive",
    "runtime_config",
    "threshold_option",
    "token",
    "worker_options",
]


# ---------------------------------------------------------------- defaults
def field_default(cls: type[Any], name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (calling its factory),
    so that a parser shows the number the worker really uses without repeating it."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            break
    raise TypeError(f"{cls.__name__}.{name} is not a dataclass field with a default")


# ---------------------------------------------------------------- argparse types
def positive(text: str) -> float:
    """A finite number > 0 (argparse type): nan and inf are refused, not crashed on."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive finite number")
    return value


def non_negative(text: str) -> float:
    """A finite number >= 0 (argparse type)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return value


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``lo``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < lo:
            raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= {lo}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


def token(text: str) -> str:
    """A worker kind or id: one NATS subject token (argparse type)."""
    try:
        return check_token(text, "name")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def client_threshold(text: str) -> Fraction:
    """The threshold a client pins, refused before any network if it is not in
    (1/2, 1] (ConfigError: exit 78, like every bad setting)."""
    value = parse_threshold(text)
    if value <= Fraction(1, 2):
        raise ConfigError(
            f"threshold {value} must be above 1/2 so that VALID and INVALID "
            "quorums always intersect"
        )
    return value


# ---------------------------------------------------------------- shared options
def threshold_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--threshold``, as text: the tally parses it, clients check it with
    ``client_threshold`` when they run (so a bad one exits 78, not 2)."""
    parser.add_argument(
        "--threshold",
        default=os.environ.get("AP_THRESHOLD", str(DEFAULT_THRESHOLD)),
        help=f"{what} as an exact fraction in (1/2, 1] (env AP_THRESHOLD, default %(default)s)",
    )


def min_pool_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--min-pool``: the pool floor (env AP_MIN_POOL); below the protocol minimum it
    is a usage error, never silently raised or lowered."""
    default = os.environ.get("AP_MIN_POOL", str(MIN_POOL))
    parser.add_argument(
        "--min-pool",
        type=int_at_least(MIN_POOL),
        default=default,
        help=f"{what} (env AP_MIN_POOL, default %(default)s, at least {MIN_POOL})",
    )


def pool_grace_option(parser: argparse.ArgumentParser) -> None:
    """``--pool-grace-s``: how long a superseded pool epoch's certificates still count."""
    parser.add_argument(
        "--pool-grace-s",
        type=non_negative,
        default=os.environ.get("AP_POOL_GRACE_S", str(DEFAULT_POOL_GRACE_S)),
        help="accept certificates of a pool epoch superseded at most this many seconds "
        "ago by the server's clock (env AP_POOL_GRACE_S, default %(default)s)",
    )


def nats_options(parser: argparse.ArgumentParser) -> None:
    """``--nats-url`` and ``--prefix``: None unless given, so ``nats_config`` falls
    back to the environment and then to the defaults named in the help."""
    parser.add_argument(
        "--nats-url",
        default=None,
        help=f"NATS server URL(s), comma separated (env NATS_URL, default {DEFAULT_NATS_URL})",
    )
    parser.add_argument(
        "--prefix",
        default=None,
        help="subject prefix, so deployments can share a server (env AP_PREFIX, "
        f"default {DEFAULT_PREFIX})",
    )


def json_option(parser: argparse.ArgumentParser, help: str = "machine-readable output") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def client_options(parser: argparse.ArgumentParser, waits_for: str, timeout: float) -> None:
    """The options of a command that asks one service and prints its answer."""
    nats_options(parser)
    parser.add_argument(
        "--timeout",
        type=positive,
        default=timeout,
        help=f"seconds to wait for {waits_for} (default %(default)s)",
    )
    json_option(parser)


def attempt_timeout_option(parser: argparse.ArgumentParser) -> None:
    """``--timeout`` of a command that submits requests for consensus (``VerifyClient``)."""
    parser.add_argument(
        "--timeout",
        type=positive,
        default=ATTEMPT_TIMEOUT_S,
        help="seconds per attempt (default %(default)s)",
    )


def worker_options(parser: argparse.ArgumentParser) -> None:
    """What every ``worker KIND`` takes besides its own options (see ``runtime_config``)."""
    nats_options(parser)
    parser.add_argument(
        "--data-dir",
        default=str(default_data_dir()),
        help="where keys live (env AP_DATA_DIR, default %(default)s)",
    )
    parser.add_argument(
        "--heartbeat-s",
        type=positive,
        default=field_default(RuntimeConfig, "heartbeat_s"),
        help="seconds between heartbeats (default %(default)s)",
    )
    parser.add_argument(
        "--metrics-s",
        type=positive,
        default=field_default(RuntimeConfig, "metrics_s"),
        help="seconds between metrics snapshots (default %(default)s)",
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=non_negative,
        default=field_default(RuntimeConfig, "drain_timeout_s"),
        help="on SIGTERM, how long to finish held work before exiting (default %(default)s)",
    )


# ---------------------------------------------------------------- from arguments
def nats_config(args: argparse.Namespace) -> NatsConfig:
    return NatsConfig.from_env(url=args.nats_url, prefix=args.prefix)


def runtime_config(args: argparse.Namespace, worker_id: str) -> RuntimeConfig:
    """The runtime of a worker started with ``worker_options``."""
    return RuntimeConfig(
        worker_id=worker_id,
        nats=nats_config(args),
        heartbeat_s=args.heartbeat_s,
        metrics_s=args.metrics_s,
        drain_timeout_s=args.drain_timeout_s,
        data_dir=Path(args.data_dir),
    )


# ---------------------------------------------------------------- input
def message_bytes(args: argparse.Namespace) -> bytes:
    """The message a command signs, verifies or endorses: ``--message-file`` bytes,
    else ``--message`` as UTF-8; neither is a configuration error (exit 78)."""
    if getattr(args, "message_file", None):
        return Path(args.message_file).read_bytes()
    if getattr(args, "message", None) is None:
        raise ConfigError("give --message TEXT or --message-file PATH")
    return str(args.message).encode()


# ---------------------------------------------------------------- output, connection
def output(args: argparse.Namespace, human: str, data: dict[str, Any]) -> None:
    """Print ``data`` as JSON if the command was given ``--json``, else ``human``."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(human)


@contextlib.asynccontextmanager
async def connection(config: NatsConfig, name: str) -> AsyncIterator[Client]:
    """A short-lived CLI connection, drained on the way out."""
    nc = await connect(config, name=name)
    try:
        yield nc
    finally:
        if not nc.is_closed:
            await nc.drain()
