"""Operators' and runners' bearer tokens: made, listed, revoked, deleted, and found by secret."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .exceptions import TokenExists, TokenNotFound
from .keys import hash_key, looks_like_token, make_token
from .models import ApiToken, ConsoleSession, utcnow
from .storage.engines import begin_write


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


def _end_console_sessions(session: Session, token: ApiToken) -> None:
    # Its console sign-ins end with it, on every copy of their cookies.
    session.execute(delete(ConsoleSession).where(ConsoleSession.token_id == token.id))


def revoke_token(session: Session, name: str) -> bool:
    """Revoke a token by name at once, ending its console sign-ins; False if it was already revoked."""
    begin_write(session)
    token = _named(session, name)
    if token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    _end_console_sessions(session, token)
    session.flush()
    return True


def delete_token(session: Session, name: str) -> None:
    """Delete a token by name: it and its console sign-ins stop working at once, and its name is free again.

    Its id is never given to another token (``ApiToken``), and its sign-ins
    are deleted here as well as by the foreign key's cascade, which SQLite
    applies only on connections that turned foreign keys on.
    """
    begin_write(session)
    token = _named(session, name)
    _end_console_sessions(session, token)
    session.delete(token)
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
