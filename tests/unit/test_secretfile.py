"""schemas/secretfile.py: the one safe writer of secret files (issue #10 hole 9e).

Every secret writer of the project (identity seeds, the master key, NATS seeds,
creds, env files and auth.conf) goes through ``write_secret``; each is checked
against the same plants: a symlink at the old predictable temp path, a symlink
at the target, a loose umask.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas.errors import AgenticPaymentsError, InsecureKeyFile
from schemas.identity import AgentIdentity
from schemas.secretfile import temp_name, write_secret
from workers.cli.nats_config import _write_secret
from workers.keys.crypto import write_master_key

VICTIM_TEXT = b"victim: must never change\n"


def save_identity(path: Path) -> None:
    AgentIdentity.generate().save(path)


def create_identity(path: Path) -> None:
    AgentIdentity.load_or_create(path)


def master_key(path: Path) -> None:
    write_master_key(path)


def nats_secret(path: Path) -> None:
    _write_secret(path, "SUAEXAMPLESEED\n")


def plain(path: Path) -> None:
    write_secret(path, b"secret\n")


WRITERS: list[Callable[[Path], None]] = [
    save_identity,
    create_identity,
    master_key,
    nats_secret,
    plain,
]


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "victim"
    path.write_bytes(VICTIM_TEXT)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("write", WRITERS, ids=lambda w: w.__name__)
def test_a_symlink_at_the_old_temp_path_is_not_followed(
    write: Callable[[Path], None], tmp_path: Path, victim: Path, loose_umask: None
) -> None:
    target = tmp_path / "secrets" / "key"
    target.parent.mkdir()
    for old in (target.with_name("key.tmp"), target.with_name(".key.tmp")):
        old.symlink_to(victim)
    write(target)
    assert victim.read_bytes() == VICTIM_TEXT
    assert mode(victim) != 0 and not target.is_symlink()
    assert mode(target) == 0o600 and target.stat().st_size > 0
    leftovers = sorted(p.name for p in target.parent.iterdir())
    assert leftovers == [".key.tmp", "key", "key.tmp"]  # only the plants, no temp file


@pytest.mark.parametrize(
    "write", [save_identity, master_key, nats_secret, plain], ids=lambda w: w.__name__
)
def test_a_symlink_at_the_target_is_refused(
    write: Callable[[Path], None], tmp_path: Path, victim: Path
) -> None:
    target = tmp_path / "key"
    target.symlink_to(victim)
    with pytest.raises(AgenticPaymentsError, match="symlink"):
        write(target)
    assert victim.read_bytes() == VICTIM_TEXT and target.is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_dangling_symlink_is_not_created_through(tmp_path: Path) -> None:
    """load_or_create sees no file behind a dangling link, and must not write where it points."""
    pointed = tmp_path / "outside" / "planted-key"
    (tmp_path / "outside").mkdir()
    target = tmp_path / "key"
    target.symlink_to(pointed)
    with pytest.raises(InsecureKeyFile):
        AgentIdentity.load_or_create(target)
    assert not pointed.exists()


@pytest.mark.parametrize("write", WRITERS, ids=lambda w: w.__name__)
def test_mode_is_0600_whatever_the_umask(
    write: Callable[[Path], None], tmp_path: Path, loose_umask: None
) -> None:
    target = tmp_path / "deep" / "dir" / "key"
    write(target)
    assert mode(target) == 0o600


def test_replace_overwrites_and_keeps_0600(tmp_path: Path) -> None:
    target = tmp_path / "k"
    target.write_bytes(b"old")
    target.chmod(0o644)
    write_secret(target, b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o600


def test_exclusive_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "k"
    write_secret(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_secret(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_load_or_create_keeps_an_existing_identity(tmp_path: Path) -> None:
    first = AgentIdentity.load_or_create(tmp_path / "id.key")
    assert AgentIdentity.load_or_create(tmp_path / "id.key").public_key == first.public_key
    with pytest.raises(FileExistsError):
        AgentIdentity.generate().save(tmp_path / "id.key", exclusive=True)
    assert AgentIdentity.load(tmp_path / "id.key").public_key == first.public_key


def test_master_key_is_not_overwritten_without_force(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    write_master_key(path)
    before = path.read_bytes()
    with pytest.raises(AgenticPaymentsError, match="refusing to overwrite"):
        write_master_key(path)
    assert path.read_bytes() == before
    write_master_key(path, force=True)
    assert path.read_bytes() != before and mode(path) == 0o600


def test_a_failed_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="No space"):
        write_secret(tmp_path / "k", b"x")
    assert list(tmp_path.iterdir()) == []


def test_temp_names_are_unpredictable(tmp_path: Path) -> None:
    names = {temp_name(tmp_path / "k").name for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith(".k.") and n.endswith(".tmp") for n in names)
