"""Errors of the review app, rooted at :class:`medassist.errors.MedAssistError`."""

from __future__ import annotations

from medassist.errors import MedAssistError, RefusalError


class UIError(MedAssistError):
    """A user-facing error of the review app (the message says what to do)."""


class NotLoggedInError(RefusalError):
    """No valid session: the call came without logging in (or after logging out)."""


class SessionExpiredError(NotLoggedInError):
    """The session was idle for longer than the configured inactivity limit."""


class LockedOutError(RefusalError):
    """Too many failed logins in a row: the account is locked for a while."""


class UIConfigError(UIError):
    """A bad value in configs/ui.yaml, the environment or the command line."""


class StudyDataError(UIError):
    """The study's images or EMR note cannot be found or no longer match the draft."""
