"""Member identities: an Ed25519 key encrypted at rest, named publicly by a did:key."""

from bcfl_cli.identity.keystore import (
    KDF_PRESETS,
    Identity,
    KdfPreset,
    PublicIdentity,
    generate_identity,
    load_identity,
    read_public_identity,
)
from bcfl_cli.identity.passphrase import ENV_VAR, passphrase_from

__all__ = [
    "ENV_VAR",
    "KDF_PRESETS",
    "Identity",
    "KdfPreset",
    "PublicIdentity",
    "generate_identity",
    "load_identity",
    "passphrase_from",
    "read_public_identity",
]
