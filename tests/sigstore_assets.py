"""The keyless assets of tests/assets/sigstore (its README says where they come from): a real
keyless bundle signed on Sigstore's staging instance (a PyPI attestation, not a lockd manifest),
the staging trusted root it verifies against, and its signer."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets" / "sigstore"
KEYLESS = ASSETS / "pypi-attestation-staging.sigstore.json"
ROOT = ASSETS / "staging-trusted_root.json"
WHO = "william@yossarian.net"
ISSUER = "https://github.com/login/oauth"
PREDICATE = "https://docs.pypi.org/attestations/publish/v1"
