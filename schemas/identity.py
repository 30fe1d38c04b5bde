"""Ed25519 identities: generate, save/load, sign, verify, did:key.

Verification is strict libsodium semantics (``crypto_sign_open``:
S must be < L, small-order and non-canonical keys rejected), which is why all
verifiers agree on every Wycheproof edge case. ``verify_signature`` never
raises on a bad signature; it returns False, because an invalid signature is a
verdict and not a failure.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing

from schemas.errors import IdentityError, InsecureKeyFile
from schemas.secretfile import write_secret

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SEED_BYTES = 32
_KEY_FILE_MAGIC = b"agentic-payments-ed25519-seed-v1\n"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_ED25519_MULTICODEC = b"\xed\x01"


def b58encode(data: bytes) -> str:
    """Bitcoin base58 (the alphabet multibase 'z' uses)."""
    num = int.from_bytes(data, "big")
    out = ""
    while num:
        num, rem = divmod(num, 58)
        out = _B58[rem] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


def b58decode(text: str) -> bytes:
    num = 0
    for ch in text:
        idx = _B58.find(ch)
        if idx < 0:
            raise IdentityError(f"invalid base58 character {ch!r}")
        num = num * 58 + idx
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


def did_key(public_key: bytes) -> str:
    """``did:key:z6Mk…``: multibase base58btc of multicodec 0xed01 + key."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise IdentityError("an Ed25519 public key is 32 bytes")
    return "did:key:z" + b58encode(_ED25519_MULTICODEC + public_key)


def public_key_from_did(did: str) -> bytes:
    if not did.startswith("did:key:z"):
        raise IdentityError("not a base58btc did:key")
    raw = b58decode(did[len("did:key:z") :])
    if raw[:2] != _ED25519_MULTICODEC or len(raw) != 2 + PUBLIC_KEY_BYTES:
        raise IdentityError("did:key is not an Ed25519 key")
    return raw[2:]


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Strict Ed25519 verification; False for any invalid input, never raises."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
        return True
    except (
        nacl.exceptions.BadSignatureError,
        nacl.exceptions.ValueError,
        nacl.exceptions.TypeError,
        ValueError,
        TypeError,
    ):
        return False


@dataclass(frozen=True)
class AgentIdentity:
    """An Ed25519 key pair. The private half stays in this object."""

    _signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> AgentIdentity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> AgentIdentity:
        if len(seed) != SEED_BYTES:
            raise IdentityError("an Ed25519 seed is 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @property
    def public_key_hex(self) -> str:
        return self.public_key.hex()

    @property
    def did(self) -> str:
        return did_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Detached 64-byte signature."""
        return bytes(self._signing_key.sign(message).signature)

    def verify(self, message: bytes, signature: bytes) -> bool:
        return verify_signature(self.public_key, message, signature)

    def save(self, path: str | os.PathLike[str], *, exclusive: bool = False) -> Path:
        """Write the seed to ``path``, readable by the owner only (0600), through the
        one safe secret writer (schemas/secretfile.py: unguessable temporary name,
        O_EXCL|O_NOFOLLOW, fsync, rename; a symlink at ``path`` is refused). With
        ``exclusive`` an existing ``path`` raises FileExistsError."""
        seed = _KEY_FILE_MAGIC + bytes(self._signing_key).hex().encode() + b"\n"
        return write_secret(path, seed, exclusive=exclusive)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AgentIdentity:
        """Load a key file; refuse one that group or others can read."""
        source = Path(path)
        try:
            mode = source.stat().st_mode
        except FileNotFoundError:
            raise IdentityError(f"key file {source} does not exist") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InsecureKeyFile(
                f"key file {source} has mode {stat.S_IMODE(mode):o}; run: chmod 600 {source}"
            )
        data = source.read_bytes()
        if not data.startswith(_KEY_FILE_MAGIC):
            raise IdentityError(f"{source} is not an agentic-payments key file")
        try:
            seed = bytes.fromhex(data[len(_KEY_FILE_MAGIC) :].strip().decode())
        except ValueError:
            raise IdentityError(f"{source} is corrupt") from None
        return cls.from_seed(seed)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> AgentIdentity:
        """The identity in ``path``, created (exclusively) if there is none yet: two
        processes starting at once end up with the same key, never one each."""
        if Path(path).exists():
            return cls.load(path)
        ident = cls.generate()
        try:
            ident.save(path, exclusive=True)
        except FileExistsError:
            return cls.load(path)  # another process created it first
        return ident

    def __repr__(self) -> str:  # never print the private key
        return f"AgentIdentity({self.did})"
