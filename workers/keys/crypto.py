"""Key material: the master key, sealing seeds at rest, signing.

Every key version is an Ed25519 seed (32 bytes) sealed with SecretBox
(XSalsa20-Poly1305, random 24-byte nonce) under the master key, and only the
sealed form is stored. The master key is 32 bytes, hex or base64, read from
``--master-key-file`` / ``AP_MASTER_KEY_FILE`` (a file, mode 0600 enforced)
or ``AP_MASTER_KEY`` (the value itself).

Wiping: the master key and every decrypted seed are kept in ``bytearray``s
that are zeroed right after use. That is as far as Python goes: PyNaCl takes
and returns immutable ``bytes``, so libsodium's own copy of a seed or of the
64-byte secret key (inside ``crypto_sign_seed_keypair``, ``SecretBox``) lives
in a ``bytes`` object we cannot overwrite; it is dropped at once and freed by
the allocator, but its memory is not cleared. Nothing here logs, reprs or
returns key material.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.secret
import nacl.utils

from schemas.errors import IdentityError, InsecureKeyFile, MasterKeyInvalid
from schemas.keys import SEALED_SEED_BYTES
from schemas.secretfile import write_secret

MASTER_KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE  # 32
SEED_BYTES = 32


def wipe(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


def parse_master_key(text: str | bytes) -> bytearray:
    """32 bytes from hex (64 characters) or base64 (44 characters); else MasterKeyInvalid."""
    raw = text.strip() if isinstance(text, bytes) else text.strip().encode()
    out: bytes | None = None
    if len(raw) == 2 * MASTER_KEY_BYTES:
        try:
            out = binascii.unhexlify(raw)
        except (binascii.Error, ValueError):
            out = None
    if out is None:
        try:
            out = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            out = None
    if out is None or len(out) != MASTER_KEY_BYTES:
        raise MasterKeyInvalid(
            "the master key must be 32 bytes written as 64 hex characters or 44 base64 characters"
        )
    return bytearray(out)


def _read_key_file(path: Path) -> bytearray:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise MasterKeyInvalid(
            f"master key file {path} does not exist (create one with "
            "'agentic-payments keys init-master --out FILE')"
        ) from None
    except OSError as exc:
        raise MasterKeyInvalid(f"master key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MasterKeyInvalid(
            f"master key file {path} is readable by group or others (chmod 600 it)"
        )
    try:
        data = bytearray(path.read_bytes())
    except OSError as exc:
        raise MasterKeyInvalid(f"master key file {path}: {exc.strerror}") from None
    try:
        return parse_master_key(bytes(data))
    finally:
        wipe(data)


def write_master_key(path: Path, *, force: bool = False) -> None:
    """Create a new random master key file (hex, mode 0600), through the one safe
    secret writer (schemas/secretfile.py); without ``force`` an existing file is
    never overwritten, even one created concurrently."""
    if path.exists() and not force:
        raise MasterKeyInvalid(f"{path} exists; refusing to overwrite a master key")
    key = bytearray(nacl.utils.random(MASTER_KEY_BYTES))
    text = bytearray(key.hex().encode() + b"\n")
    try:
        write_secret(path, bytes(text), exclusive=not force)
    except FileExistsError:
        raise MasterKeyInvalid(f"{path} exists; refusing to overwrite a master key") from None
    except InsecureKeyFile as exc:
        raise MasterKeyInvalid(str(exc)) from None
    finally:
        wipe(key)
        wipe(text)


class MasterKey:
    """The SecretBox key that seals every seed. Never printed, never logged."""

    def __init__(self, key: bytearray, source: str) -> None:
        if len(key) != MASTER_KEY_BYTES:
            raise MasterKeyInvalid("the master key must be 32 bytes")
        self._key = key
        self.source = source  # where it came from (a path or "env"), safe to log

    def __repr__(self) -> str:
        return f"MasterKey(source={self.source!r})"

    @classmethod
    def resolve(
        cls, path: Path | None, default_path: Path, *, env: dict[str, str] | None = None
    ) -> tuple[MasterKey, bool]:
        """Explicit file > AP_MASTER_KEY_FILE > AP_MASTER_KEY > ``default_path``.

        Only ``default_path`` is created when missing (a development
        convenience for ``up``); the second value says whether it was.
        """
        env = dict(os.environ) if env is None else env
        if path is not None:
            return cls(_read_key_file(path), str(path)), False
        if env.get("AP_MASTER_KEY_FILE"):
            file = Path(env["AP_MASTER_KEY_FILE"])
            return cls(_read_key_file(file), str(file)), False
        if env.get("AP_MASTER_KEY"):
            return cls(parse_master_key(env["AP_MASTER_KEY"]), "env AP_MASTER_KEY"), False
        created = False
        if not default_path.exists():
            try:
                write_master_key(default_path)
                created = True
            except MasterKeyInvalid:
                if not default_path.exists() or default_path.is_symlink():
                    raise  # not a concurrent creation: a planted symlink, or worse
                # another key manager created it first: use that one
        return cls(_read_key_file(default_path), str(default_path)), created

    def close(self) -> None:
        wipe(self._key)

    def _box(self) -> nacl.secret.SecretBox:
        return nacl.secret.SecretBox(bytes(self._key))

    def seal(self, seed: bytearray) -> bytes:
        sealed = bytes(self._box().encrypt(bytes(seed)))
        assert len(sealed) == SEALED_SEED_BYTES
        return sealed

    def open(self, sealed: bytes) -> bytearray:
        if len(sealed) != SEALED_SEED_BYTES:
            raise IdentityError("key material has been destroyed or is corrupt")
        try:
            return bytearray(self._box().decrypt(sealed))
        except nacl.exceptions.CryptoError:
            raise IdentityError(
                "sealed key does not open under this master key (wrong master key?)"
            ) from None

    def generate(self) -> tuple[bytes, bytes]:
        """A new Ed25519 key: (public key, sealed seed)."""
        seed = bytearray(nacl.utils.random(SEED_BYTES))
        try:
            public, _secret = nacl.bindings.crypto_sign_seed_keypair(bytes(seed))
            del _secret
            return public, self.seal(seed)
        finally:
            wipe(seed)

    def sign(self, sealed: bytes, public_key: bytes, message: bytes) -> bytes:
        """Open the seed, check it is ``public_key``'s, sign ``message`` (detached)."""
        seed = self.open(sealed)
        try:
            public, secret = nacl.bindings.crypto_sign_seed_keypair(bytes(seed))
            if public != public_key:
                raise IdentityError("sealed key does not match its public key")
            signed = nacl.bindings.crypto_sign(message, secret)
            del secret
            return bytes(signed[:64])
        finally:
            wipe(seed)
