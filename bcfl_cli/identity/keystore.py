"""A member's Ed25519 key at rest: Argon2id-derived key + SecretBox, in a 0600 JSON file.

The KDF limits are stored in the file so that a key written with any preset opens later; on
read they are bounded, so a crafted file cannot make us allocate gigabytes. The public key and
did are stored in clear (``bcfl identity show`` needs no passphrase) and checked against the
decrypted seed, so a file whose clear part was swapped is refused rather than trusted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.signing
import nacl.utils

from bcfl_cli.errors import BcflError, EncodingError, IdentityError
from bcfl_cli.home import Home
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.encoding import canonical, parse_json

KEY_FILE_VERSION = 1
KDF_ALG = "argon2id13"
MAX_KEY_FILE_BYTES = 16 * 1024
MAX_NAME_LEN = 64

KdfPreset = Literal["interactive", "moderate", "sensitive"]
KDF_PRESETS: dict[str, tuple[int, int]] = {
    "interactive": (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE),
    "sensitive": (argon2id.OPSLIMIT_SENSITIVE, argon2id.MEMLIMIT_SENSITIVE),
}
# Bounds on limits read from a file: weaker than interactive is refused (someone downgraded the
# file), stronger than sensitive too (a crafted file asking for all of memory).
_MIN_OPS, _MIN_MEM = KDF_PRESETS["interactive"]
_MAX_OPS, _MAX_MEM = KDF_PRESETS["sensitive"]


@dataclass(frozen=True)
class Identity:
    """A member's name and secret signing key; never printed (``repr`` hides the key)."""

    name: str
    signing_key: nacl.signing.SigningKey

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def did(self) -> str:
        return did_from_public_key(self.public_key)

    def public(self) -> PublicIdentity:
        return PublicIdentity(self.name, self.did, self.public_key.hex())

    def __repr__(self) -> str:
        return f"Identity(name={self.name!r}, did={self.did!r})"


@dataclass(frozen=True)
class PublicIdentity:
    name: str
    did: str
    public_key_hex: str


def _validate_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_LEN or not name.isprintable() or name != name.strip():
        raise IdentityError(
            f"identity name must be 1-{MAX_NAME_LEN} printable characters, got {name!r}"
        )
    return name


def _derive(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit
    )


def generate_identity(
    home: Home,
    name: str,
    passphrase: bytes,
    *,
    force: bool = False,
    kdf: KdfPreset = "moderate",
) -> Identity:
    """Create a fresh key pair and store it encrypted in ``home.key_file``."""
    _validate_name(name)
    if not passphrase:
        raise IdentityError("an empty passphrase would leave the key unprotected")
    if kdf not in KDF_PRESETS:
        raise IdentityError(f"unknown KDF preset {kdf!r}; use one of {sorted(KDF_PRESETS)}")
    path = home.key_file
    if path.exists() and not force:
        raise IdentityError(
            f"an identity already exists at {path}",
            hint="use --force to replace it (the old key is lost for good)",
        )
    opslimit, memlimit = KDF_PRESETS[kdf]
    signing_key = nacl.signing.SigningKey.generate()
    salt = nacl.utils.random(argon2id.SALTBYTES)
    box = nacl.secret.SecretBox(_derive(passphrase, salt, opslimit, memlimit))
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    ciphertext = box.encrypt(bytes(signing_key), nonce).ciphertext
    identity = Identity(name, signing_key)
    document = {
        "version": KEY_FILE_VERSION,
        "name": name,
        "did": identity.did,
        "public_key": identity.public_key.hex(),
        "kdf": {"alg": KDF_ALG, "opslimit": opslimit, "memlimit": memlimit, "salt": salt.hex()},
        "nonce": nonce.hex(),
        "ciphertext": ciphertext.hex(),
    }
    home.ensure()
    _write_private(path, canonical(document) + b"\n", replace=force)
    return identity


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write a 0600 file atomically: a fresh O_EXCL temp file, fsynced, then linked into place.

    Without ``replace`` the final step is ``link``, which fails if the name exists, so two
    concurrent keygens cannot overwrite each other either.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise IdentityError(
                    f"an identity already exists at {path}",
                    hint="use --force to replace it (the old key is lost for good)",
                ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_key_file(home: Home) -> dict[str, Any]:
    path = home.key_file
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise IdentityError(
            f"no identity in {home.root}", hint="create one with `bcfl keygen`"
        ) from exc
    except OSError as exc:
        raise IdentityError(f"cannot read key file {path}: {exc.strerror}") from exc
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise IdentityError(f"key file {path} is corrupt: larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        data = parse_json(raw)
        return _check_key_document(data)
    except (EncodingError, IdentityError, ValueError, TypeError, KeyError) as exc:
        message = exc.message if isinstance(exc, BcflError) else str(exc)
        raise IdentityError(f"key file {path} is corrupt: {message}") from exc


def _hex_field(data: dict[str, Any], key: str, size: int | None = None) -> bytes:
    value = bytes.fromhex(data[key])
    if size is not None and len(value) != size:
        raise ValueError(f"{key} must be {size} bytes")
    return value


def _check_key_document(data: Any) -> dict[str, Any]:
    keys = {"version", "name", "did", "public_key", "kdf", "nonce", "ciphertext"}
    if not isinstance(data, dict) or set(data) != keys:
        raise ValueError(f"fields must be exactly {sorted(keys)}")
    if data["version"] != KEY_FILE_VERSION:
        raise ValueError(f"unsupported key file version {data['version']!r}")
    kdf = data["kdf"]
    if not isinstance(kdf, dict) or set(kdf) != {"alg", "opslimit", "memlimit", "salt"}:
        raise ValueError("kdf must be {alg, opslimit, memlimit, salt}")
    if kdf["alg"] != KDF_ALG:
        raise ValueError(f"unsupported KDF {kdf['alg']!r}")
    ops, mem = kdf["opslimit"], kdf["memlimit"]
    if not isinstance(ops, int) or not _MIN_OPS <= ops <= _MAX_OPS:
        raise ValueError(f"kdf opslimit {ops!r} outside [{_MIN_OPS}, {_MAX_OPS}]")
    if not isinstance(mem, int) or not _MIN_MEM <= mem <= _MAX_MEM:
        raise ValueError(f"kdf memlimit {mem!r} outside [{_MIN_MEM}, {_MAX_MEM}]")
    _hex_field(kdf, "salt", argon2id.SALTBYTES)
    _hex_field(data, "nonce", nacl.secret.SecretBox.NONCE_SIZE)
    _hex_field(data, "ciphertext", 32 + nacl.secret.SecretBox.MACBYTES)
    public_key = _hex_field(data, "public_key", 32)
    if not isinstance(data["name"], str):
        raise ValueError("name must be a string")
    _validate_name(data["name"])
    if data["did"] != did_from_public_key(public_key):
        raise ValueError("did does not match public_key")
    return data


def read_public_identity(home: Home) -> PublicIdentity:
    """The clear part of the key file; needs no passphrase."""
    data = _read_key_file(home)
    return PublicIdentity(data["name"], data["did"], data["public_key"])


def load_identity(home: Home, passphrase: bytes) -> Identity:
    """Decrypt the key; a wrong passphrase is an IdentityError, never a traceback."""
    path = home.key_file
    data = _read_key_file(home)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"key file {path} is readable by others (mode {mode:o})",
            hint=f"chmod 600 {path}",
        )
    kdf = data["kdf"]
    key = _derive(passphrase, bytes.fromhex(kdf["salt"]), kdf["opslimit"], kdf["memlimit"])
    box = nacl.secret.SecretBox(key)
    try:
        seed = box.decrypt(bytes.fromhex(data["ciphertext"]), bytes.fromhex(data["nonce"]))
    except nacl.exceptions.CryptoError as exc:
        raise IdentityError(f"wrong passphrase for {path}") from exc
    identity = Identity(data["name"], nacl.signing.SigningKey(seed))
    if identity.public_key.hex() != data["public_key"]:
        raise IdentityError(f"key file {path} is corrupt: secret and public key do not match")
    return identity
