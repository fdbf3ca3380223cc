"""Cluster keys: the keyring of one daemon, key ids, key files, and wrapping a key to send
it to the other members.

A *key* is 16 to 4096 secret bytes shared by the cluster (``ringd keys generate`` writes
32 random bytes as hex). Its *key id* is 8 hex digits (a 32-bit BLAKE2b of the key): it
travels in every datagram header, so the receiver picks the key by id instead of trying
each. The *keyring* holds every installed key and names the *primary* one, which
protects what this daemon sends; any installed key is accepted on receipt. It persists in
the state directory (file :data:`KEYRING_FILE`, mode 0600), so a restarted daemon keeps
the keys installed, switched and removed online (``ringd keys``).

Key files and the keyring file are refused when group or others may access them, as ssh
refuses a private key with open permissions.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES_MIN: Final = 16
KEY_BYTES_MAX: Final = 4096
KEY_FILE_BYTES_MAX: Final = 2 * KEY_BYTES_MAX + 64  # hex plus whitespace
GENERATED_KEY_BYTES: Final = 32
KEY_ID_BYTES: Final = 4
KEYRING_FILE: Final = "keyring"
KEYS_MAX: Final = 16  # installed at once; rotation needs two
_WRAP_NONCE_BYTES: Final = 12


class KeyFileError(Exception):
    """A key or keyring file is missing, unreadable, too open or unusable (one line)."""


class KeyringError(Exception):
    """A keyring change that cannot be applied (one line, e.g. removing the primary key)."""


def key_id(key: bytes) -> str:
    """The public id of ``key``: 8 hex digits (a 32-bit BLAKE2b, so it reveals nothing)."""
    return hashlib.blake2b(key, digest_size=KEY_ID_BYTES, person=b"ringd-key-id").hexdigest()


def root_key(key: bytes) -> bytes:
    """32 bytes every other key of ``key`` is derived from (BLAKE2b keys hold 64 bytes at
    most, and key files may hold more)."""
    return hashlib.blake2b(key, digest_size=32, person=b"ringd-root-key").digest()


def check_private(path: Path | str, what: str = "key file") -> None:
    """Refuse a file that group or others may read or write (as ssh does for private keys)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path}: does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path}: cannot read: {exc.strerror}") from None
    if mode & 0o077 and stat.S_ISREG(mode):
        raise KeyFileError(f"{what} {path}: permissions {stat.S_IMODE(mode):04o} are too open: "
                           f"it must not be accessible by group or others (chmod 600 {path})")


def parse_key(raw: bytes, where: str) -> bytes:
    """A key from file contents: hex (even number of digits) or raw bytes, >= 16 bytes.
    Surrounding whitespace is ignored."""
    text = raw.strip()
    key = text
    kind = "raw"
    try:
        key = bytes.fromhex(text.decode("ascii"))
        kind = "hex"
    except (UnicodeDecodeError, ValueError):
        pass
    check_key_size(key, f"{where}: {kind} key")
    return key


def check_key_size(key: bytes, what: str) -> None:
    """KeyFileError (one line, starting with ``what``) unless ``key`` has an allowed size."""
    if len(key) < KEY_BYTES_MIN:
        raise KeyFileError(f"{what} has {len(key)} bytes, need at least {KEY_BYTES_MIN}")
    if len(key) > KEY_BYTES_MAX:
        raise KeyFileError(f"{what} has {len(key)} bytes, at most {KEY_BYTES_MAX}")


def load_key(path: str | Path) -> bytes:
    """Read a cluster key file (see :func:`parse_key`); refuse one that group or others
    may access. Raises :class:`KeyFileError` naming the file."""
    check_private(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(KEY_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path}: does not exist") from None
    except IsADirectoryError:
        raise KeyFileError(f"key file {path}: is a directory") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path}: cannot read: {exc.strerror}") from None
    if len(raw) > KEY_FILE_BYTES_MAX:
        raise KeyFileError(f"key file {path}: larger than {KEY_FILE_BYTES_MAX} bytes")
    return parse_key(raw, f"key file {path}")


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to a new file of mode 0600 (created so, never widened), fsync it and
    rename it over ``path``; with ``exclusive`` refuse an existing ``path``."""
    if exclusive and os.path.lexists(path):
        raise FileExistsError(f"{path} already exists")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if someone created it meanwhile
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def generate_key_file(path: Path) -> str:
    """Write 32 random bytes (hex) to a new file of mode 0600; return the key id."""
    key = os.urandom(GENERATED_KEY_BYTES)
    write_private(path, key.hex().encode() + b"\n", exclusive=True)
    return key_id(key)


class Keyring:
    """The installed keys of one daemon by id, and the primary one (used to send).

    Every change bumps :attr:`generation`, so the codec's caches of derived keys follow.
    """

    def __init__(self, keys: list[bytes], primary: str | None = None) -> None:
        if not keys:
            raise KeyringError("a keyring needs at least one key")
        self.keys: dict[str, bytes] = {}
        for key in keys:
            self._add(key)
        self.primary = primary if primary is not None else key_id(keys[0])
        if self.primary not in self.keys:
            raise KeyringError(f"primary key {self.primary} is not installed")
        self.generation = 0

    @property
    def primary_key(self) -> bytes:
        return self.keys[self.primary]

    def _add(self, key: bytes) -> str:
        if not KEY_BYTES_MIN <= len(key) <= KEY_BYTES_MAX:
            raise KeyringError(f"a key must have {KEY_BYTES_MIN} to {KEY_BYTES_MAX} bytes")
        kid = key_id(key)
        old = self.keys.get(kid)
        if old is not None and old != key:
            raise KeyringError(f"key id {kid} is taken by another key (generate a new key)")
        if old is None and len(self.keys) >= KEYS_MAX:
            raise KeyringError(f"the keyring holds {KEYS_MAX} keys already (remove one first)")
        self.keys[kid] = key
        return kid

    def install(self, key: bytes) -> str:
        """Add ``key`` (idempotent); return its id."""
        kid = self._add(key)
        self.generation += 1
        return kid

    def use(self, kid: str) -> None:
        """Make installed key ``kid`` the primary one."""
        if kid not in self.keys:
            raise KeyringError(f"key {kid} is not installed")
        self.primary = kid
        self.generation += 1

    def remove(self, kid: str) -> None:
        """Remove key ``kid``; the primary key cannot be removed."""
        if kid not in self.keys:
            raise KeyringError(f"key {kid} is not installed")
        if kid == self.primary:
            raise KeyringError(f"key {kid} is the primary key (`ringd keys use` another one first)")
        del self.keys[kid]
        self.generation += 1

    def listing(self) -> dict[str, object]:
        """``{"primary": id, "keys": [ids...]}`` (ids only, never key bytes)."""
        return {"primary": self.primary, "keys": sorted(self.keys)}

    # --- persistence ----------------------------------------------------------------------

    def save(self, path: Path) -> None:
        doc = {"primary": self.primary, "keys": [self.keys[k].hex() for k in sorted(self.keys)]}
        write_private(path, json.dumps(doc).encode() + b"\n")

    @classmethod
    def load(cls, path: Path) -> Keyring | None:
        """The keyring persisted at ``path``, None if there is none; :class:`KeyFileError`
        if it is too open or damaged."""
        if not os.path.lexists(path):
            return None
        check_private(path, "keyring file")
        try:
            doc = json.loads(path.read_bytes())
            keys = [bytes.fromhex(k) for k in doc["keys"]]
            primary = doc["primary"]
            if type(primary) is not str:
                raise TypeError("primary")
            return cls(keys, primary)
        except (OSError, ValueError, KeyError, TypeError, KeyringError) as exc:
            raise KeyFileError(f"keyring file {path}: unreadable ({type(exc).__name__}: {exc}); "
                               "remove it to start from key_file again") from None


# --- wrapping a key to send it through the ring -------------------------------------------

def _wrapping(key: bytes) -> AESGCM:
    wrap_key = hashlib.blake2b(root_key(key), digest_size=32, person=b"ringd-key-wrap").digest()
    return AESGCM(wrap_key)


def wrap_key(wrapping: bytes, key: bytes) -> bytes:
    """``key`` encrypted under a key derived from ``wrapping`` (AES-256-GCM, random nonce:
    a handful of wraps per key, far below the 2**32 random-nonce bound)."""
    nonce = os.urandom(_WRAP_NONCE_BYTES)
    return nonce + _wrapping(wrapping).encrypt(nonce, key, b"ringd-key-wrap")


def unwrap_key(wrapping: bytes, blob: bytes) -> bytes:
    """Inverse of :func:`wrap_key`; :class:`KeyringError` if it does not authenticate."""
    if len(blob) <= _WRAP_NONCE_BYTES:
        raise KeyringError("wrapped key too short")
    try:
        return _wrapping(wrapping).decrypt(blob[:_WRAP_NONCE_BYTES], blob[_WRAP_NONCE_BYTES:],
                                           b"ringd-key-wrap")
    except InvalidTag:
        raise KeyringError("wrapped key does not authenticate (wrapping key differs)") from None
