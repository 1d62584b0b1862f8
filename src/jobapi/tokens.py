"""Operators' and runners' bearer tokens: made, listed, revoked, deleted, and found by secret."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from .exceptions import TokenExists, TokenNotFound
from .keys import hash_key, looks_like_token, make_token
from .models import ApiToken, utcnow
from .storage import begin_write


@dataclass(frozen=True)
class NewToken:
    """A token just made, and its secret, which is never shown again."""

    token: ApiToken
    secret: str


def create_token(session: Session, *, name: str, role: str) -> NewToken:
    """Make a bearer token for a role; names are unique among tokens that exist."""
    begin_write(session)
    if session.scalars(select(ApiToken.id).where(ApiToken.name == name)).first() is not None:
        raise TokenExists(name)
    secret = make_token(role)
    token = ApiToken(name=name, role=role, token_digest=hash_key(secret), created_at=utcnow())
    session.add(token)
    session.flush()
    return NewToken(token=token, secret=secret)


def list_tokens(session: Session) -> Sequence[ApiToken]:
    """Every token, oldest first, revoked ones included."""
    return session.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)).all()


def _named(session: Session, name: str) -> ApiToken:
    token = session.scalars(select(ApiToken).where(ApiToken.name == name)).first()
    if token is None:
        raise TokenNotFound(name)
    return token


def revoke_token(session: Session, name: str) -> bool:
    """Revoke a token by name at once; False if it was already revoked."""
    begin_write(session)
    token = _named(session, name)
    if token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    session.flush()
    return True


def delete_token(session: Session, name: str) -> None:
    """Delete a token by name: it stops working at once, and its name is free again."""
    begin_write(session)
    session.delete(_named(session, name))
    session.flush()


def find_token(session: Session, secret: str) -> ApiToken | None:
    """The active token whose secret this is, or None. Job keys never match."""
    if not looks_like_token(secret):
        return None
    digest = hash_key(secret)
    token = session.scalars(select(ApiToken).where(ApiToken.token_digest == digest)).first()
    if token is None or token.revoked_at is not None:
        return None
    # The lookup was by digest; compare once more in constant time all the same.
    return token if hmac.compare_digest(token.token_digest, digest) else None
