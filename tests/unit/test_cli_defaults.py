"""The CLI shows every default from where it lives, and ``members`` lists by default.

Every option whose default means something must say so with ``%(default)s`` in
its help, so the number printed is the number used; the worker options must
default to their options dataclass (TallyOptions, RuntimeConfig, ...), not to a
copy of its numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

import workers.cli.operator as operator
from bus.runtime import RuntimeConfig
from schemas.quorum import parse_threshold
from workers.anomaly.baseline import BaselineConfig
from workers.anomaly.byzantine_rules import QuarantinePolicy
from workers.anomaly.worker import AnomalyOptions
from workers.cli.main import build_parser, main
from workers.consensus.cli import tally_options
from workers.consensus.tally import TallyOptions
from workers.recovery.staleness import RetryPolicy
from workers.recovery.worker import RecoveryOptions

#: Options whose default is a sentinel the help explains in words.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("keys revoke", "--version"): "0 means every version, said as '(default: all)'",
    ("keys sign", "--version"): "0 means the latest version, said as '(default: the latest)'",
}

#: Variables that would turn an option's default into the caller's environment.
ENVIRONMENT = (
    "AP_THRESHOLD",
    "AP_DATA_DIR",
    "AP_PREFIX",
    "NATS_URL",
    "AP_WORKER_KIND",
    "AP_WORKER_ID",
    "AP_RECOVERY_BACKEND",
    "AP_SUPERVISOR",
)


@pytest.fixture(autouse=True)
def code_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``parser`` and every subcommand's parser below it, with its command path."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, (*path, name))


def means_nothing(default: Any) -> bool:
    """None, False, "" and []: "not given", which needs no mention in the help."""
    return default is None or default is False or default == "" or default == []


def undocumented_defaults(root: argparse.ArgumentParser) -> list[str]:
    """Options with a default their help does not show through ``%(default)s``."""
    problems = []
    for path, parser in parsers(root):
        shows_all = issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if means_nothing(action.default) or shows_all:
                continue
            name = action.option_strings[0] if action.option_strings else action.dest
            if (path, name) in EXCEPTIONS:
                continue
            if "%(default)s" not in (action.help or ""):
                problems.append(f"{path} {name}: default {action.default!r}, help {action.help!r}")
    return problems


def options(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def dataclass_defaults(cls: type[Any], *names: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {name: fields[name].default for name in names}


# ---------------------------------------------------------------- %(default)s
def test_every_default_is_shown_through_percent_default() -> None:
    assert undocumented_defaults(build_parser()) == []


def test_a_hard_coded_default_in_help_is_caught() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    child = sub.add_parser("tally")
    child.add_argument("--max-batch", type=int, default=64, help="most requests (default 64)")
    child.add_argument("--quiet", action="store_true", help="say less")
    assert undocumented_defaults(parser) == [
        "tally --max-batch: default 64, help 'most requests (default 64)'"
    ]


def test_exceptions_still_exist() -> None:
    """A stale exception would hide the next undocumented default of that name."""
    found = {
        (path, option)
        for path, parser in parsers(build_parser())
        for action in parser._actions
        for option in action.option_strings
    }
    assert set(EXCEPTIONS) <= found


# ---------------------------------------------------------------- dataclass defaults
def test_tally_defaults_are_tally_options() -> None:
    args = options("worker", "tally")
    assert tally_options(args) == TallyOptions()
    assert parse_threshold(args.threshold) == TallyOptions().threshold


@pytest.mark.parametrize(
    "kind", ["verifier", "tally", "keys", "trust", "authority", "anomaly", "recovery"]
)
def test_runtime_defaults_are_runtime_config(kind: str) -> None:
    argv = ["worker", kind] + (["--id", "v1"] if kind == "verifier" else [])
    args = options(*argv)
    expected = dataclass_defaults(RuntimeConfig, "heartbeat_s", "metrics_s", "drain_timeout_s")
    assert {name: getattr(args, name) for name in expected} == expected


def test_anomaly_defaults_are_its_options() -> None:
    args = options("worker", "anomaly")
    baseline, policy, anomaly = BaselineConfig(), QuarantinePolicy(), AnomalyOptions()
    assert (args.window, args.warmup, args.score_threshold, args.rel_spread) == (
        baseline.window,
        baseline.warmup,
        baseline.threshold,
        baseline.rel_spread,
    )
    assert (args.raise_after, args.clear_after, args.method) == (
        baseline.raise_after,
        baseline.clear_after,
        baseline.method.value,
    )
    assert (args.quarantine, args.min_pool, args.quarantine_interval_s) == (
        policy.mode.value,
        policy.min_pool,
        policy.min_interval_s,
    )
    assert args.max_quarantines_per_hour == policy.max_per_hour
    assert (args.byzantine_after, args.realert_s, args.history_s, args.alerts_days) == (
        anomaly.byzantine_after,
        anomaly.realert_s,
        anomaly.history_s,
        anomaly.alerts_days,
    )


def test_recovery_defaults_are_its_options() -> None:
    args = options("worker", "recovery")
    policy, recovery = RetryPolicy(), RecoveryOptions()
    assert (args.max_retries, args.backoff_s, args.backoff_max_s, args.jitter) == (
        policy.max_retries,
        policy.base_s,
        policy.max_backoff_s,
        policy.jitter,
    )
    assert (args.startup_grace_s, args.reset_after_s) == (
        policy.startup_grace_s,
        policy.reset_after_s,
    )
    assert (args.missed, args.replay_s) == (recovery.missed, recovery.replay_s)


# ---------------------------------------------------------------- members
def test_members_without_an_action_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str | None]] = []

    async def fake_members(args: argparse.Namespace) -> int:
        seen.append((args.action, args.id))
        return 0

    monkeypatch.setattr(operator, "_members", fake_members)
    assert options("members").action == options("members", "list").action == "list"
    assert main(["members"]) == 0
    assert main(["members", "list", "--json"]) == 0
    assert seen == [("list", None), ("list", None)]


def test_members_remove_still_needs_an_id(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fake_members(args: argparse.Namespace) -> int:
        raise AssertionError("must not run without an id")

    monkeypatch.setattr(operator, "_members", fake_members)
    with pytest.raises(SystemExit) as exc:
        main(["members", "remove"])
    assert exc.value.code == 2
    assert "members remove needs an id" in capsys.readouterr().err
