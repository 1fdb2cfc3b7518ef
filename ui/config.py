"""Settings of ``medassist serve``: a frozen dataclass validated on construction.

Precedence: command line > environment (``MEDASSIST_UI_<FIELD>``) > ``configs/ui.yaml`` (or
``--config``) > the defaults below. Nothing is read at import time.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ui.errors import UIConfigError

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "configs" / "ui.yaml"
ENV_PREFIX = "MEDASSIST_UI_"


@dataclass(frozen=True)
class UIConfig:
    session_idle_s: float = 900.0
    lockout_failures: int = 5
    lockout_s: float = 900.0
    max_upload_bytes: int = 1 << 20
    export_dir: str | None = None
    emr_dir: str | None = None
    cache_studies: int = 8
    concurrency: int = 8
    trusted_proxies: tuple[str, ...] = field(default_factory=tuple)
    sso_user_header: str | None = None

    def __post_init__(self) -> None:
        if self.session_idle_s <= 0:
            raise UIConfigError("ui.session_idle_s must be > 0 seconds")
        if self.lockout_failures < 1:
            raise UIConfigError("ui.lockout_failures must be >= 1")
        if self.lockout_s <= 0:
            raise UIConfigError("ui.lockout_s must be > 0 seconds")
        if not 1024 <= self.max_upload_bytes <= 100 << 20:
            raise UIConfigError("ui.max_upload_bytes must lie in [1 KiB, 100 MiB]")
        if self.cache_studies < 1 or self.concurrency < 1:
            raise UIConfigError("ui.cache_studies and ui.concurrency must be >= 1")
        for p in self.trusted_proxies:
            try:
                ipaddress.ip_network(p, strict=False)
            except ValueError:
                raise UIConfigError(f"ui.trusted_proxies: {p!r} is not an IP address or "
                                    "network (e.g. 127.0.0.1 or 10.0.0.0/8)") from None
        v = self.sso_user_header
        if v is not None and (not v or not all(c.isalnum() or c == "-" for c in v)):
            raise UIConfigError(f"ui.sso_user_header: {v!r} is not an HTTP header name")

    def is_trusted_proxy(self, host: str | None) -> bool:
        """Whether ``host`` (the TCP peer) is one of the configured reverse proxies."""
        if not host or not self.trusted_proxies:
            return False
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)


_FIELDS = {f.name: f for f in dataclasses.fields(UIConfig)}


def _coerce(name: str, value: Any, where: str) -> Any:
    kind = str(_FIELDS[name].type)
    if value is None:
        return None
    try:
        if "tuple" in kind:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if not isinstance(value, list | tuple):
                raise TypeError
            return tuple(str(v) for v in value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("int"):
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        return str(value)
    except (TypeError, ValueError):
        raise UIConfigError(f"{where}: ui.{name} has the wrong type ({value!r}); expected "
                            f"{kind}") from None


def load_config(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> UIConfig:
    """File (``path`` or configs/ui.yaml when present), then environment, then ``overrides``
    (the command line; ``None`` values are ignored)."""
    import yaml

    values: dict[str, Any] = {}
    p = Path(path) if path else DEFAULT_FILE
    if p.is_file():
        with p.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        sec = data.get("ui", {}) if isinstance(data, dict) else None
        if not isinstance(sec, dict):
            raise UIConfigError(f"{p}: expected a 'ui:' mapping")
        for k, v in sec.items():
            if k not in _FIELDS:
                raise UIConfigError(f"{p}: unknown setting ui.{k}; known: {sorted(_FIELDS)}")
            values[k] = _coerce(k, v, str(p))
    elif path:
        raise UIConfigError(f"UI config {p} not found")
    env = os.environ if environ is None else environ
    for k in _FIELDS:
        if (ev := env.get(ENV_PREFIX + k.upper())) is not None:
            values[k] = _coerce(k, ev if ev != "" else None, ENV_PREFIX + k.upper())
    for k, v in (overrides or {}).items():
        if v is not None:
            if k not in _FIELDS:
                raise UIConfigError(f"unknown setting {k}")
            values[k] = _coerce(k, v, "command line")
    if values.get("trusted_proxies") is None:
        values.pop("trusted_proxies", None)
    return UIConfig(**values)
