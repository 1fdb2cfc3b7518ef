"""Users, argon2 password hashes, authentication and role checks — all audited.

Failed logins and refused operations are written to the audit trail *before* the typed
error is raised (:class:`~medassist.errors.RefusalError`); commit the session afterwards
(``storage.unit_of_work`` does) so the refusal is kept.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.orm import Session

from medassist import audit
from medassist.audit import Actor, AuditAction, ObjectType, Outcome
from medassist.errors import (
    AuthenticationError,
    MedAssistError,
    NotFoundError,
    PermissionDeniedError,
)
from medassist.storage.models import Role, User, utcnow

log = logging.getLogger("medassist.auth")

USERNAME_RE = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")
MIN_PASSWORD = 10


@dataclass(frozen=True)
class Argon2Params:
    """argon2id cost parameters (defaults: argon2-cffi's, RFC 9106 low-memory profile)."""

    time_cost: int = 3
    memory_cost_kib: int = 65536
    parallelism: int = 4

    def __post_init__(self) -> None:
        if self.time_cost < 1 or self.parallelism < 1 or self.memory_cost_kib < 8 * \
                self.parallelism:
            raise MedAssistError("argon2 parameters: time_cost >= 1, parallelism >= 1, "
                                 "memory_cost_kib >= 8 * parallelism")

    def hasher(self) -> PasswordHasher:
        return PasswordHasher(time_cost=self.time_cost, memory_cost=self.memory_cost_kib,
                              parallelism=self.parallelism)


def hash_password(password: str, params: Argon2Params | None = None) -> str:
    return (params or Argon2Params()).hasher().hash(password)


def check_password(user: User, password: str) -> bool:
    """argon2 verification of ``password`` against the user's stored hash."""
    try:
        return bool(PasswordHasher().verify(user.password_hash, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def actor_of(user: User) -> Actor:
    return Actor(user_id=user.id, username=user.username, role=user.role)


def get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFoundError(f"no user named {username!r}; list users or add one with "
                            "`medassist user add`")
    return user


def refuse(session: Session, actor: Actor, object_type: ObjectType, object_id: str | int,
           reason: str, error: type[MedAssistError] = PermissionDeniedError,
           message: str | None = None) -> MedAssistError:
    """Record a refusal (Security Alert, minor failure) and return the error to raise."""
    audit.record(session, AuditAction.REFUSAL, actor, object_type, object_id,
                 outcome=Outcome.MINOR_FAILURE, detail=reason)
    return error(message or reason)


def require_role(session: Session, actor: Actor, roles: Collection[Role], what: str,
                 object_type: ObjectType, object_id: str | int) -> None:
    """Raise (audited) :class:`PermissionDeniedError` unless the actor has one of ``roles``."""
    if actor.role not in {r.value for r in roles} and actor.role != "system":
        raise refuse(session, actor, object_type, object_id,
                     f"role {actor.role!r} may not {what}",
                     message=f"user {actor.username!r} (role {actor.role}) may not {what}; "
                             f"needs role {' or '.join(sorted(r.value for r in roles))}")


def create_user(session: Session, *, username: str, display_name: str, role: Role | str,
                password: str, actor: Actor, params: Argon2Params | None = None) -> User:
    """Add a user (admin or the local system only); audited."""
    require_role(session, actor, [Role.ADMIN], "add users", ObjectType.USER, username[:64] or "-")
    if not USERNAME_RE.match(username):
        raise MedAssistError(f"invalid user name {username!r}: 2-64 characters, lower-case "
                             "letters, digits, '.', '_' or '-', starting with a letter")
    try:
        role = Role(role)
    except ValueError:
        raise MedAssistError(f"unknown role {role!r}; use one of "
                             f"{[r.value for r in Role]}") from None
    if len(password) < MIN_PASSWORD:
        raise MedAssistError(f"password too short: use at least {MIN_PASSWORD} characters")
    if not display_name.strip():
        raise MedAssistError("display name must not be empty (it is printed on signatures)")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise MedAssistError(f"user {username!r} already exists (user names are never "
                             "reused; pick another)")
    user = User(username=username, display_name=display_name.strip(), role=role.value,
                password_hash=hash_password(password, params), active=True)
    session.add(user)
    session.flush()
    audit.record(session, AuditAction.USER_ADD, actor, ObjectType.USER, username,
                 detail=f"role={role.value}")
    log.info("user %s added with role %s", username, role.value)
    return user


def disable_user(session: Session, username: str, actor: Actor) -> User:
    """Disable a user (kept, never deleted, so IDs and signatures stay resolvable)."""
    require_role(session, actor, [Role.ADMIN], "disable users", ObjectType.USER, username)
    user = get_user(session, username)
    user.active = False
    user.disabled_at = utcnow()
    session.flush()
    audit.record(session, AuditAction.USER_DISABLE, actor, ObjectType.USER, username)
    return user


def authenticate(session: Session, username: str, password: str) -> User:
    """Log in; success and failure (unknown user, wrong password, disabled) are audited."""
    user = session.scalar(select(User).where(User.username == username))
    ok = check_password(user, password) if user is not None else False
    if user is None:
        # spend the same time as a real check so user names cannot be probed by timing
        try:
            PasswordHasher().verify(_DUMMY.hash, password)
        except (VerificationError, InvalidHashError):
            pass
    reason = ("unknown user" if user is None else "wrong password" if not ok
              else "account disabled" if not user.active else "")
    obj = username if USERNAME_RE.match(username) else "invalid-username"
    if reason:
        actor = actor_of(user) if user is not None else Actor(None, obj, "unknown")
        audit.record(session, AuditAction.LOGIN, actor, ObjectType.USER, obj,
                     outcome=Outcome.MINOR_FAILURE, detail=reason)
        log.warning("failed login for %s: %s", obj, reason)
        raise AuthenticationError("login failed: wrong user name or password, or the account "
                                  "is disabled")
    if user is None:  # pragma: no cover - reason is set above
        raise AuthenticationError("login failed")
    audit.record(session, AuditAction.LOGIN, actor_of(user), ObjectType.USER, username)
    return user


class _Dummy:
    """A lazily computed hash used to equalise the timing of unknown-user logins."""

    _hash: str | None = None

    @property
    def hash(self) -> str:
        if _Dummy._hash is None:
            _Dummy._hash = PasswordHasher().hash("not-a-real-password")
        return _Dummy._hash


_DUMMY = _Dummy()
