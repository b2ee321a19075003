"""The aggregator's settings, in one place.

Precedence, lowest first: the defaults below, the instance config file
(``<instance>/consortium.cfg``, a Python file of UPPER_CASE assignments, or the file named by
``FEDFRAUD_CONFIG``), environment variables ``FEDFRAUD_<KEY>``, and finally the mapping given
to :func:`consortium.app.create_app` (tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from consortium.secure_sum import MIN_BANKS, check_quorum

ENV_PREFIX = "FEDFRAUD_"
INSTANCE_CONFIG_FILE = "consortium.cfg"


def utcnow() -> datetime:
    """The current time as a naive UTC datetime (how every timestamp is stored)."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class ConsortiumConfig:
    """Every setting of the aggregator service.

    Attributes
    ----------
    DATABASE_URL
        SQLAlchemy URL; default ``sqlite:///<instance>/consortium.db``.
    BLOB_DIR
        Directory of the content-addressed payload store; default ``<instance>/blobs``.
    MAX_CONTENT_LENGTH
        Largest request body in bytes (64 MiB); larger requests get 413.
    DEFAULT_MIN_BANKS
        Quorum of a run opened without ``min_banks``.
    DEFAULT_ROUND_TIMEOUT_S
        Round deadline of a run opened without ``round_timeout_s``.
    DEFAULT_RUN_TIMEOUT_S
        Deadline of a whole run opened without ``run_timeout_s``: an open run past it fails.
    DEFAULT_TRAIN_DAYS, DEFAULT_VALIDATION_DAYS, DEFAULT_LABEL_DELAY_DAYS
        The window of a run opened without one (``schemas/run.py``).
    TIME_ZONE
        The consortium's time zone (IANA name): a run's default ``as_of`` date, the schedule.
    SCHEDULE_DEFAULT_CRON
        Cadence of a family's schedule before anyone changed it (nightly at 02:00 local).
    SCHEDULE_GRACE_S
        A firing missed while no scheduler ran is caught up once if less than this old.
    SCHEDULE_RELOAD_S
        How often the scheduler process reads schedule changes from the database.
    PROMOTION_TOLERANCE
        A run's model replaces the current one unless its pooled AUC is lower by more than this.
    SWEEP_INTERVAL_S
        How often ``serve`` closes expired rounds in the background.
    AUTO_MIGRATE
        Apply the database migrations at start-up when the database is empty.
    KEEP_CONTRIBUTION_BLOBS
        Keep individual ciphertexts after their round closed (default: delete them).
    AGGREGATION_PROCESSES
        Processes a large round's sum is spread over (0: one per core; 1: summed in one thread).
    AGGREGATION_BACKGROUND_MIN_BYTES
        A round whose contributions add up to at least this many bytes is large: summed off the
        request that completed it, by ``AGGREGATION_PROCESSES`` processes. Smaller rounds (a
        night's histograms are tens of KiB) are summed in that request, faster than a hand-off.
    LOG_LEVEL
        Level of the ``consortium`` loggers.
    DEVELOPMENT_MODE
        Accept the ``plain`` (unencrypted) HE scheme; logged as a warning at start-up. Never in
        production: with ``plain`` the aggregator reads every sum.
    LEDGER_KEY_FILE
        The Ed25519 key that signs the contribution ledger's checkpoints (created on first start,
        mode 0600); default ``ledger-signing.key`` beside the blob directory.
    LEDGER_ORIGIN
        The ledger's name in its signed checkpoints.
    SESSION_COOKIE_SECURE
        Send the compliance pages' session cookie over HTTPS only (set it behind TLS).
    CLOCK
        Callable returning the naive-UTC time; tests replace it (not settable from env).
    """

    DATABASE_URL: str = ""
    BLOB_DIR: str = ""
    MAX_CONTENT_LENGTH: int = 64 * 1024 * 1024
    DEFAULT_MIN_BANKS: int = MIN_BANKS
    DEFAULT_ROUND_TIMEOUT_S: int = 600
    DEFAULT_RUN_TIMEOUT_S: int = 8 * 3600
    DEFAULT_TRAIN_DAYS: int = 7
    DEFAULT_VALIDATION_DAYS: int = 7
    DEFAULT_LABEL_DELAY_DAYS: int = 7
    TIME_ZONE: str = "UTC"
    SCHEDULE_DEFAULT_CRON: str = "0 2 * * *"
    SCHEDULE_GRACE_S: int = 6 * 3600
    SCHEDULE_RELOAD_S: int = 60
    PROMOTION_TOLERANCE: float = 0.005
    SWEEP_INTERVAL_S: int = 30
    AUTO_MIGRATE: bool = True
    KEEP_CONTRIBUTION_BLOBS: bool = False
    AGGREGATION_PROCESSES: int = 0
    AGGREGATION_BACKGROUND_MIN_BYTES: int = 16 * 1024 * 1024
    LOG_LEVEL: str = "INFO"
    DEVELOPMENT_MODE: bool = False
    LEDGER_KEY_FILE: str = ""
    LEDGER_ORIGIN: str = "fedfraud-consortium"
    SESSION_COOKIE_SECURE: bool = False
    CLOCK: Callable[[], datetime] = field(default=utcnow)

    def as_flask_config(self) -> dict[str, Any]:
        """The settings as a mapping for ``app.config``."""
        return {item.name: getattr(self, item.name) for item in fields(self)}


_NOT_FROM_ENV = frozenset({"CLOCK"})


def _coerce(name: str, raw: str, kind: str) -> Any:
    """An environment value as the field's annotated kind (annotations are strings here)."""
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"{ENV_PREFIX}{name}={raw!r} is not a boolean (use true or false)")
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{name}={raw!r} is not an integer") from None
    if kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{name}={raw!r} is not a number") from None
    return raw


def _read_instance_file(path: Path) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102 - operator's own file
    return {key: value for key, value in namespace.items() if key.isupper()}


def load_config(
    instance_path: str | os.PathLike[str],
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConsortiumConfig:
    """Resolve the settings: defaults, instance file, environment, then ``overrides``.

    Parameters
    ----------
    instance_path
        The Flask instance folder (holds the default database, blobs and config file).
    overrides
        Highest-precedence values (from ``create_app(config)``).
    environ
        Environment to read (default ``os.environ``).

    Returns
    -------
    ConsortiumConfig
        The resolved settings.

    Raises
    ------
    ValueError
        An unknown key in ``overrides`` or a value of the wrong type.
    """
    environ = os.environ if environ is None else environ
    instance = Path(instance_path)
    known = {item.name: item.type for item in fields(ConsortiumConfig)}
    values: dict[str, Any] = {}

    config_file = Path(environ[f"{ENV_PREFIX}CONFIG"]) if f"{ENV_PREFIX}CONFIG" in environ else None
    config_file = config_file or instance / INSTANCE_CONFIG_FILE
    if config_file.is_file():
        values.update({k: v for k, v in _read_instance_file(config_file).items() if k in known})

    for name, kind in known.items():
        raw = environ.get(f"{ENV_PREFIX}{name}")
        if raw is not None and name not in _NOT_FROM_ENV:
            values[name] = _coerce(name, raw, str(kind))

    for name, value in (overrides or {}).items():
        if name not in known:
            continue  # Flask's own keys (TESTING, ...) pass through create_app untouched
        values[name] = value

    if not values.get("DATABASE_URL"):
        values["DATABASE_URL"] = f"sqlite:///{instance / 'consortium.db'}"
    if not values.get("BLOB_DIR"):
        values["BLOB_DIR"] = str(instance / "blobs")
    try:
        check_quorum(int(values.get("DEFAULT_MIN_BANKS", MIN_BANKS)))
    except ValueError as exc:
        raise ValueError(f"DEFAULT_MIN_BANKS: {exc}") from None
    try:
        ZoneInfo(str(values.get("TIME_ZONE", "UTC")))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"TIME_ZONE: {values.get('TIME_ZONE')!r} is not an IANA time zone (e.g. Europe/Brussels)") from None
    return ConsortiumConfig(**values)
