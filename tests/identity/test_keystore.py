"""The key file at rest: 0600, never silently overwritten, wrong passphrase and damage refused."""

from __future__ import annotations

import json
import stat

import pytest

from bcfl_cli.errors import IdentityError
from bcfl_cli.home import Home
from bcfl_cli.identity import generate_identity, load_identity, read_public_identity
from bcfl_cli.protocol.crypto import Domain, public_key_from_did, sign_digest, verify_by_did
from tests.conftest import PASSPHRASE


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_key_round_trips_and_is_0600(make_home):
    member = make_home("alice")
    assert _mode(member.home.key_file) == 0o600
    loaded = load_identity(member.home, PASSPHRASE)
    assert loaded.did == member.did
    assert loaded.name == "alice"
    assert public_key_from_did(loaded.did) == loaded.public_key
    digest = "ab" * 32
    assert verify_by_did(
        loaded.did, Domain.TX, digest, sign_digest(loaded.signing_key, Domain.TX, digest)
    )


def test_mode_is_0600_even_with_a_permissive_umask(tmp_path):
    import os

    old = os.umask(0)
    try:
        home = Home.resolve(tmp_path / "h")
        generate_identity(home, "a", PASSPHRASE, kdf="interactive")
    finally:
        os.umask(old)
    assert _mode(home.key_file) == 0o600
    assert not [p for p in home.root.iterdir() if p.name.endswith(".tmp")]


def test_key_file_holds_no_secret_in_clear(make_home):
    member = make_home("alice")
    data = json.loads(member.home.key_file.read_text())
    assert set(data) == {"version", "name", "did", "public_key", "kdf", "nonce", "ciphertext"}
    assert data["kdf"]["alg"] == "argon2id13"
    seed = bytes(member.identity.signing_key).hex()
    assert seed not in member.home.key_file.read_text()


def test_refuses_to_overwrite_without_force(make_home):
    member = make_home("alice")
    before = member.home.key_file.read_bytes()
    with pytest.raises(IdentityError, match="already exists"):
        generate_identity(member.home, "alice2", PASSPHRASE, kdf="interactive")
    assert member.home.key_file.read_bytes() == before


def test_force_replaces_the_key(make_home):
    member = make_home("alice")
    new = generate_identity(member.home, "alice", b"other", force=True, kdf="interactive")
    assert new.did != member.did
    assert read_public_identity(member.home).did == new.did
    assert _mode(member.home.key_file) == 0o600
    with pytest.raises(IdentityError, match="wrong passphrase"):
        load_identity(member.home, PASSPHRASE)


def test_wrong_passphrase_is_an_identity_error(make_home):
    member = make_home("alice")
    with pytest.raises(IdentityError, match="wrong passphrase"):
        load_identity(member.home, b"not it")


def test_public_identity_needs_no_passphrase(make_home):
    member = make_home("bob")
    public = read_public_identity(member.home)
    assert (public.name, public.did) == ("bob", member.did)
    assert public.public_key_hex == member.identity.public_key.hex()


def test_missing_identity_points_at_keygen(tmp_path):
    with pytest.raises(IdentityError, match="no identity") as info:
        read_public_identity(Home.resolve(tmp_path / "empty"))
    assert "bcfl keygen" in (info.value.hint or "")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("nonce"),
        lambda d: d.update(version=2),
        lambda d: d.update(did="did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"),
        lambda d: d.update(ciphertext=d["ciphertext"][:-2]),
        lambda d: d["kdf"].update(memlimit=2**40),  # a crafted file must not eat all memory
        lambda d: d["kdf"].update(opslimit=1),  # nor be silently downgraded
        lambda d: d["kdf"].update(alg="scrypt"),
        lambda d: d.update(name=""),
    ],
)
def test_corrupt_key_files_are_refused(make_home, mutate):
    member = make_home("alice")
    data = json.loads(member.home.key_file.read_text())
    mutate(data)
    member.home.key_file.write_text(json.dumps(data))
    with pytest.raises(IdentityError, match="corrupt"):
        load_identity(member.home, PASSPHRASE)


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b"{" * 5000, b"x" * 20000])
def test_garbage_key_files_are_refused(make_home, content):
    member = make_home("alice")
    member.home.key_file.write_bytes(content)
    with pytest.raises(IdentityError, match="corrupt"):
        read_public_identity(member.home)


def test_flipped_ciphertext_byte_is_refused_as_wrong_passphrase(make_home):
    member = make_home("alice")
    data = json.loads(member.home.key_file.read_text())
    ct = bytearray(bytes.fromhex(data["ciphertext"]))
    ct[0] ^= 1
    data["ciphertext"] = ct.hex()
    member.home.key_file.write_text(json.dumps(data))
    with pytest.raises(IdentityError):
        load_identity(member.home, PASSPHRASE)


def test_swapped_public_key_is_detected_after_decryption(make_home):
    """The clear did/public key are checked against the decrypted secret."""
    alice, bob = make_home("alice"), make_home("bob")
    data = json.loads(alice.home.key_file.read_text())
    other = json.loads(bob.home.key_file.read_text())
    data["did"], data["public_key"] = other["did"], other["public_key"]
    alice.home.key_file.write_text(json.dumps(data))
    with pytest.raises(IdentityError, match="do not match"):
        load_identity(alice.home, PASSPHRASE)


def test_group_readable_key_file_is_refused(make_home):
    member = make_home("alice")
    member.home.key_file.chmod(0o644)
    with pytest.raises(IdentityError, match="readable by others") as info:
        load_identity(member.home, PASSPHRASE)
    assert "chmod 600" in (info.value.hint or "")


@pytest.mark.parametrize("name", ["", " lead", "a" * 65, "bad\nname"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(IdentityError, match="name"):
        generate_identity(Home.resolve(tmp_path / "h"), name, PASSPHRASE, kdf="interactive")


def test_empty_passphrase_is_refused(tmp_path):
    with pytest.raises(IdentityError, match="empty passphrase"):
        generate_identity(Home.resolve(tmp_path / "h"), "a", b"", kdf="interactive")


def test_identity_repr_hides_the_secret(make_home):
    member = make_home("alice")
    assert bytes(member.identity.signing_key).hex() not in repr(member.identity)
