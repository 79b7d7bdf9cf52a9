"""Model apps: a consortium's own model and training code, pinned by the genesis.

``api`` is the interface an app implements; the rest of the package loads an app by entry point,
hashes its source manifest, checks it against the genesis pin and supplies bcfl's defaults.
"""
