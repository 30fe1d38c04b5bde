"""The ``agentic-payments`` command line.

  up        start NATS (if none answers at NATS_URL) plus every worker
  worker    run one worker process (verifier | tally | keys | trust | authority |
            anomaly | recovery) — what ``up``, systemd and Kubernetes start
  demo      the usage example against a running system
  keygen    create an Ed25519 identity file (0600)
  sign      sign a message, print (or write) a VerificationRequest
  verify    submit a signed message for consensus and print the certificate
  members   list or remove verifiers in the pool
  status    discover running workers through $SRV.PING and show their health
  check     health probe for one worker: exit 0 serving, 1 unhealthy, 69 silent;
            --liveness: local file only, no NATS (0 fresh, 1 stale)
  keys, trust, authority, alerts, recovery, trace, nats-config, admit
            the services' and operators' commands (see each --help)

Exit codes: 0 ok; 1 decided but not VALID, or a certificate that does not
check out (verify, demo); 2 usage; 69 cannot connect to NATS or no reply;
70 crash; 75 a worker stopped but abandoned work; 78 bad configuration.

This module is the entry point only: the parser skeleton, the modules that
register commands (``EXTENSIONS``) and the error -> exit code mapping. The
shared options live in workers/cli/kit.py; the commands in workers/cli/up.py,
client.py (keygen, sign, verify, demo), operator.py (members, status, check),
trace.py, nats_config.py, admit.py and each worker package's cli.py.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bus.runtime import Worker, run_worker
from schemas.errors import (
    AgenticPaymentsError,
    ConfigError,
    IdentityError,
    NotConnected,
    TransportError,
)
from workers.cli.kit import (
    EXIT_CONFIG,
    EXIT_CONNECT,
    EXIT_CRASH,
    EXIT_INTERRUPTED,
    EXIT_NOT_VALID,
)

#: Modules that add commands, each beside the code it drives (a worker package
#: holds its process, its pure logic and its CLI), in the order ``--help`` lists
#: them. Each defines ``register(sub, kinds)``: ``sub`` is the top-level
#: subparsers, ``kinds`` the ``worker KIND`` subparsers. A worker kind sets
#: ``worker_factory=fn(args) -> Worker`` as a parser default; any other command
#: sets ``func=fn(args) -> exit code``.
EXTENSIONS: tuple[str, ...] = (
    "workers.cli.up",
    "workers.consensus.cli",
    "workers.cli.trace",
    "workers.anomaly.cli",
    "workers.trust.cli",
    "workers.authority.cli",
    "workers.keys.cli",
    "workers.recovery.cli",
    "workers.cli.nats_config",
    "workers.cli.admit",
    "workers.cli.client",
    "workers.cli.operator",
)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the worker the chosen kind's factory builds, until SIGTERM/SIGINT."""

    def factory() -> Worker:
        worker: Worker = args.worker_factory(args)
        return worker

    return run_worker(factory)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentic-payments",
        description="Byzantine-fault-tolerant Ed25519 verification of agent payment "
        "authorizations over NATS.",
        epilog="Quick start: 'agentic-payments up' in one terminal, "
        "'agentic-payments demo' in another. Exit codes: 0 ok, 1 not VALID "
        "(or a certificate that does not check out), 2 usage, 69 cannot connect "
        "or no reply, 70 crash, 75 a worker stopped but had to abandon work, "
        "78 bad configuration.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    worker = sub.add_parser(
        "worker",
        help="run one worker process",
        description="Run one worker until SIGTERM/SIGINT, then stop "
        "taking work, finish held work, drain and exit 0, all within "
        "--drain-timeout-s + 2 s; exit 75 instead if held work or the drain "
        "had to be abandoned (NATS gone or hung, work still held at the timeout).",
    )
    kinds = worker.add_subparsers(dest="kind", required=True, metavar="KIND")
    worker.set_defaults(func=cmd_worker)
    for name in EXTENSIONS:
        importlib.import_module(name).register(sub, kinds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ConfigError, IdentityError) as exc:  # bad settings, unusable key files
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        print(f"error [FILE_UNREADABLE]: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    except (NotConnected, TransportError) as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    except AgenticPaymentsError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return EXIT_NOT_VALID if exc.code != "INTERNAL" else EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())
