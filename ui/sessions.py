"""Server-side login sessions (random tokens, inactivity logoff) and the login lockout.

The browser only holds a token inside Gradio's server-side ``gr.State``; every handler looks
it up here, so a direct ``/gradio_api/`` call without logging in has no session. The lockout
is derived from the audit trail (the failed ``login`` events of the user since the last
successful one), so it needs no schema change and survives restarts.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from medassist.audit import AuditAction
from medassist.storage.models import AuditEvent
from ui.errors import NotLoggedInError, SessionExpiredError


@dataclass
class UserSession:
    token: str
    user_id: int
    username: str
    display_name: str
    role: str
    last_seen: float
    created: float = field(default_factory=time.monotonic)


class SessionStore:
    """Tokens → sessions, in this process's memory (one server process; see docs/deploy.md)."""

    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, UserSession] = {}

    def create(self, user_id: int, username: str, display_name: str, role: str) -> UserSession:
        tok = secrets.token_urlsafe(32)
        now = self._clock()
        s = UserSession(tok, user_id, username, display_name, role, now, now)
        with self._lock:
            self._purge(now)
            self._sessions[tok] = s
        return s

    def _purge(self, now: float) -> None:
        for t in [t for t, s in self._sessions.items() if now - s.last_seen > self.idle_s]:
            del self._sessions[t]

    def get(self, token: str | None, *, touch: bool = True) -> UserSession:
        """The live session of ``token`` (refreshing its activity time when ``touch``)."""
        if not token or not isinstance(token, str):
            raise NotLoggedInError("not logged in: log in with your user name and password")
        now = self._clock()
        with self._lock:
            s = self._sessions.get(token)
            if s is None:
                raise NotLoggedInError("not logged in (or logged out): log in again")
            if now - s.last_seen > self.idle_s:
                del self._sessions[token]
                raise SessionExpiredError(
                    f"you were logged off after {self.idle_s:.0f} s without activity; "
                    "log in again")
            if touch:
                s.last_seen = now
            return s

    def end(self, token: str | None) -> UserSession | None:
        with self._lock:
            return self._sessions.pop(token, None) if token else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


def _parse_time(t: str) -> datetime:
    return datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def failed_logins(session: Session, username: str) -> tuple[int, datetime | None]:
    """Failed logins of ``username`` since its last successful one (from the audit trail),
    and the time of the latest failure."""
    login = AuditAction.LOGIN.name
    rows = session.execute(
        select(AuditEvent.outcome, AuditEvent.event_time)
        .where(AuditEvent.event_type == login, AuditEvent.object_type == "user",
               AuditEvent.object_id == username)
        .order_by(AuditEvent.seq.desc()).limit(200)).all()
    n = 0
    last: datetime | None = None
    for outcome, t in rows:
        if outcome == 0:
            break
        n += 1
        if last is None:
            last = _parse_time(t)
    return n, last


def lockout_remaining(session: Session, username: str, *, failures: int, lock_s: float,
                      now: datetime | None = None) -> float:
    """Seconds the account stays locked (0: not locked): ``failures`` failed logins in a row,
    the last one less than ``lock_s`` seconds ago."""
    n, last = failed_logins(session, username)
    if n < failures or last is None:
        return 0.0
    left = lock_s - ((now or datetime.now(UTC)) - last).total_seconds()
    return max(0.0, left)
