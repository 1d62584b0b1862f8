"""Secrets: making job keys and bearer tokens, storing only their digests, checking them in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def make_key() -> str:
    """A new job key: 64 hex characters, 256 bits of randomness."""
    return secrets.token_hex(32)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which a key is stored."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def verify_job_key(key_digest: str, key: str) -> bool:
    """Whether ``key`` is the key whose digest is stored, compared in constant time."""
    return hmac.compare_digest(key_digest, hash_key(key))


TOKEN_PREFIXES = {"operator": "jobapi_op_", "runner": "jobapi_rn_"}


def make_token(role: str) -> str:
    """A new bearer token for a role: a recognisable prefix and 256 bits of randomness."""
    return TOKEN_PREFIXES[role] + secrets.token_hex(32)


def looks_like_token(value: str) -> bool:
    """Whether a string has a bearer token's form (a job key never does)."""
    return any(value.startswith(prefix) for prefix in TOKEN_PREFIXES.values())
