"""The console's sign-ins, kept on the server: made at sign-in, found on every page, ended at sign-out.

The session cookie (signed by Flask) carries only a random id; the database
keeps its SHA-256 digest, the token it signed in with and when it expires.
So a sign-in ends for every copy of its cookie at once when its row goes: at
sign-out, when its token is revoked or deleted (``jobapi.tokens``), or when
it expires.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..keys import hash_key
from ..models import ApiToken, ConsoleSession, utcnow

OPERATOR = "operator"
# What a session id looks like in a cookie: secrets.token_urlsafe(32).
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")


def begin(session: Session, token: ApiToken, lifetime: timedelta) -> str:
    """Sign ``token`` in for ``lifetime``: the random id for the cookie (shown nowhere else).

    Sign-ins that have expired are removed on the way, so the table holds
    only live ones and those of operators who never signed out.
    """
    now = utcnow()
    session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
    session_id = secrets.token_urlsafe(32)
    session.add(ConsoleSession(id=hash_key(session_id), token_id=token.id, created_at=now, expires_at=now + lifetime))
    session.flush()
    return session_id


def operator_of(session: Session, session_id: Any, now: datetime | None = None) -> ApiToken | None:
    """The operator token a cookie's session id signed in, while the sign-in and the token last."""
    if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
        return None
    token = session.scalars(
        select(ApiToken)
        .join(ConsoleSession, ConsoleSession.token_id == ApiToken.id)
        .where(ConsoleSession.id == hash_key(session_id), ConsoleSession.expires_at > (now or utcnow()))
    ).first()
    if token is None or token.revoked_at is not None or token.role != OPERATOR:
        return None
    return token


def end(session: Session, session_id: Any) -> None:
    """End the sign-in a cookie names (nothing if there is none)."""
    if isinstance(session_id, str) and _SESSION_ID.fullmatch(session_id):
        session.execute(delete(ConsoleSession).where(ConsoleSession.id == hash_key(session_id)))
