"""Where runs live: `<data>/runs/<run_id>/` holds `manifest.json` and `journal.jsonl`."""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.journal import read_events
from rag.errors import InputError, StorageError

RUN_ID_PATTERN = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}")


@dataclass
class JournalState:
    """What a run's journal says so far, folded event by event (a reader that tails the
    journal folds only the new ones)."""

    done: int = 0  # case results
    total: int | None = None  # from the latest run_started
    ended: str | None = None  # the latest run_finished's status
    progress: dict[str, Any] | None = None  # the latest progress or run_finished figures
    last_id: int = 0

    def add(self, event_id: int, type_: str, data: dict[str, Any]) -> None:
        self.last_id = event_id
        if type_ == "case_finished":
            self.done += 1
        elif type_ == "run_started":  # a resume starts the run again
            self.total, self.ended = int(data.get("total", 0)), None
        if type_ == "run_finished":
            self.ended = str(data.get("status", "finished"))
        if type_ in ("progress", "run_finished"):
            self.progress = {k: v for k, v in data.items() if k != "status"}


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment: str
    status: str  # running, finished, cancelled, interrupted
    done: int
    total: int
    created: float
    tenants: tuple[str, ...]
    variants: tuple[str, ...]


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def new_run_id() -> str:
        return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)

    def folder(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
            raise InputError(f"invalid run id {run_id!r} (expected YYYYMMDD-HHMMSS-xxxxxx)")
        return self.root / run_id

    def journal_path(self, run_id: str) -> Path:
        return self.folder(run_id) / "journal.jsonl"

    def exists(self, run_id: str) -> bool:
        return (self.folder(run_id) / "manifest.json").exists()

    def require(self, run_id: str) -> Path:
        if not self.exists(run_id):
            raise InputError(f"no run {run_id!r} in {self.root}")
        return self.folder(run_id)

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> None:
        folder = self.folder(run_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / "manifest.json.tmp"
            tmp.write_text(json.dumps(manifest, indent=2, default=str))
            os.replace(tmp, folder / "manifest.json")
        except OSError as exc:
            raise StorageError(f"cannot write run manifest in {folder}: {exc}") from exc

    def manifest(self, run_id: str) -> dict[str, Any]:
        path = self.require(run_id) / "manifest.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc
        return data

    def run_ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(
            (p.name for p in self.root.iterdir()
             if RUN_ID_PATTERN.fullmatch(p.name) and (p / "manifest.json").exists()),
            reverse=True,
        )

    def info(self, run_id: str, state: JournalState | None = None) -> RunInfo:
        """The run's listing; `state`, if given, is its journal already folded."""
        manifest = self.manifest(run_id)
        journal = self.journal_path(run_id)
        if state is None:
            state = JournalState()
            for event in read_events(journal):
                state.add(event.id, event.type, event.data)
        status = state.ended or "interrupted"
        if status == "interrupted" and is_being_written(journal):
            status = "running"
        total = state.total if state.total is not None else int(manifest.get("total", 0))
        return RunInfo(run_id, str(manifest.get("experiment", "")), status, state.done, total,
                       float(manifest.get("created", 0.0)),
                       tuple(manifest.get("tenants", ())), tuple(manifest.get("variants", ())))

    def list(self) -> list[RunInfo]:
        return [self.info(run_id) for run_id in self.run_ids()]


def is_being_written(journal: Path) -> bool:
    """True while a process holds the journal's writer lock."""
    try:
        with journal.open("rb") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False
