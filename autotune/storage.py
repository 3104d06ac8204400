"""The project's own tables (SQLAlchemy 2.0) beside Optuna's, in one database.

Optuna's RDB storage holds every trial; these tables hold what Optuna does not know:
which model and machine a study is about, and the best config per
model fingerprint x hardware fingerprint x VRAM cap x workload, so ``autotune best``
answers at once and a later ``run`` can warm-start.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import platformdirs
from filelock import FileLock
from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, String, create_engine, event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from autotune.errors import AutotuneError

SQLITE_TIMEOUT_S = 60
HEARTBEAT_ENV = "AUTOTUNE_HEARTBEAT_S"  # seconds between a running trial's heartbeats (default 30)
GRACE_HEARTBEATS = 4  # a running trial whose last heartbeat is older than this many intervals is stale


def default_storage_url() -> str:
    """An SQLite file under the user data dir (created on first use)."""
    directory = Path(platformdirs.user_data_dir("autotune", appauthor=False))
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'autotune.db'}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class ModelRow(Base):
    __tablename__ = "autotune_models"
    fingerprint: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    path: Mapped[str] = mapped_column(String(4096))
    profile: Mapped[dict[str, Any]]


class HardwareRow(Base):
    __tablename__ = "autotune_hardware"
    fingerprint: Mapped[str] = mapped_column(String(32), primary_key=True)
    description: Mapped[str] = mapped_column(String(512))
    profile: Mapped[dict[str, Any]]


class StudyRow(Base):
    __tablename__ = "autotune_studies"
    name: Mapped[str] = mapped_column(String(256), primary_key=True)  # = the Optuna study name
    model_fingerprint: Mapped[str] = mapped_column(ForeignKey("autotune_models.fingerprint"))
    hardware_fingerprint: Mapped[str] = mapped_column(ForeignKey("autotune_hardware.fingerprint"))
    vram_cap: Mapped[int] = mapped_column(BigInteger)
    workload_key: Mapped[str] = mapped_column(String(128))
    settings: Mapped[dict[str, Any]]  # backends, budget, workload: what resume needs
    status: Mapped[str] = mapped_column(String(32), default="running")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class BestConfigRow(Base):
    __tablename__ = "autotune_best_configs"
    model_fingerprint: Mapped[str] = mapped_column(ForeignKey("autotune_models.fingerprint"), primary_key=True)
    hardware_fingerprint: Mapped[str] = mapped_column(ForeignKey("autotune_hardware.fingerprint"), primary_key=True)
    vram_cap: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    workload_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    backend: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    objective_mean: Mapped[float] = mapped_column(Float)
    objective_std: Mapped[float] = mapped_column(Float)
    result: Mapped[dict[str, Any]]  # the TrialResult of the winner, re-measurements pooled
    study_name: Mapped[str] = mapped_column(ForeignKey("autotune_studies.name"))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL and a busy timeout, so several processes can share one SQLite file."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_TIMEOUT_S * 1000}")
        cursor.close()


def engine_kwargs(url: str) -> dict[str, Any]:
    """Engine options shared by our engine and Optuna's RDBStorage."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 (the ``postgres`` extra), not SQLAlchemy's default psycopg2."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def shown_url(url: str) -> str:
    """The URL as errors show it: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return url


def heartbeat_interval() -> int:
    try:
        return max(1, int(os.environ.get(HEARTBEAT_ENV, "30")))
    except ValueError:
        raise AutotuneError(f"{HEARTBEAT_ENV} must be a whole number of seconds") from None


class Database:
    """One database URL: our tables, plus the Optuna storage built on the same URL."""

    def __init__(self, url: str | None = None):
        self.url = normalize_url(url or default_storage_url())
        try:
            self.engine = create_engine(self.url, **engine_kwargs(self.url))
            if self.url.startswith("sqlite"):
                _sqlite_pragmas(self.engine)
            Base.metadata.create_all(self.engine)
        except ImportError as exc:
            extra = " (pip install 'autotune[postgres]')" if "psycopg" in str(exc) else ""
            raise AutotuneError(f"cannot open the storage {shown_url(self.url)}: {exc}{extra}") from None
        except (SQLAlchemyError, ValueError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            if self.url.startswith("sqlite") and "unable to open" in reason:
                reason += " (does its directory exist, and may autotune write there?)"
            elif "://" not in self.url:  # a file path where a URL belongs
                reason = f"not a database URL; for a SQLite file write sqlite:///{Path(self.url).absolute()}"
            raise AutotuneError(f"cannot open the storage {shown_url(self.url)}: {reason}") from None

    def ask_lock(self) -> contextlib.AbstractContextManager:
        """Held while a worker takes its next trial from Optuna. On SQLite, taking a queued
        trial reads it, then marks it running, and ``SELECT ... FOR UPDATE`` does nothing
        there, so two workers could take the same one (and the later one died when it told
        its result). A lock file beside the database makes them take turns; other databases
        lock the row themselves."""
        path = make_url(self.url).database if self.url.startswith("sqlite") else None
        if not path or path == ":memory:":
            return contextlib.nullcontext()
        return FileLock(f"{path}.lock")

    def optuna_storage(self) -> Any:
        """Optuna's RDB storage; a trial whose heartbeats stop (its worker died) is failed by the
        next worker that looks, and queued again once."""
        import optuna

        interval = heartbeat_interval()
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental; they are what we want
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    self.url, engine_kwargs=engine_kwargs(self.url), heartbeat_interval=interval,
                    grace_period=GRACE_HEARTBEATS * interval,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
        except Exception as exc:  # optuna wraps driver errors in many types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AutotuneError(f"cannot open the Optuna storage {shown_url(self.url)}: {reason}") from None

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def upsert_model(self, fingerprint: str, name: str, path: str, profile: dict[str, Any]) -> None:
        with self.session() as s, s.begin():
            s.merge(ModelRow(fingerprint=fingerprint, name=name, path=path, profile=profile))

    def upsert_hardware(self, fingerprint: str, description: str, profile: dict[str, Any]) -> None:
        with self.session() as s, s.begin():
            s.merge(HardwareRow(fingerprint=fingerprint, description=description, profile=profile))

    def add_study(self, row: StudyRow) -> None:
        with self.session() as s, s.begin():
            s.merge(row)

    def set_study_status(self, name: str, status: str) -> None:
        with self.session() as s, s.begin():
            row = s.get(StudyRow, name)
            if row is not None:
                row.status = status

    def study(self, name: str) -> StudyRow | None:
        with self.session() as s:
            return s.get(StudyRow, name)

    def studies(self, model_fingerprint: str | None = None, hardware_fingerprint: str | None = None) -> list[StudyRow]:
        query = select(StudyRow).order_by(StudyRow.created)
        if model_fingerprint:
            query = query.where(StudyRow.model_fingerprint == model_fingerprint)
        if hardware_fingerprint:
            query = query.where(StudyRow.hardware_fingerprint == hardware_fingerprint)
        with self.session() as s:
            return list(s.scalars(query))

    def save_best(self, row: BestConfigRow) -> None:
        with self.session() as s, s.begin():
            s.merge(row)

    def best_configs(
        self, model_fingerprint: str, hardware_fingerprint: str | None = None, vram_cap: int | None = None
    ) -> list[BestConfigRow]:
        query = select(BestConfigRow).where(BestConfigRow.model_fingerprint == model_fingerprint)
        if hardware_fingerprint:
            query = query.where(BestConfigRow.hardware_fingerprint == hardware_fingerprint)
        if vram_cap is not None:
            query = query.where(BestConfigRow.vram_cap == vram_cap)
        with self.session() as s:
            return list(s.scalars(query.order_by(BestConfigRow.vram_cap)))
