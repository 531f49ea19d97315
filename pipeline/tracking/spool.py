"""The local spool of MLflow runs: a journal of everything a stage run logs, in the user's repository,
so that no run is lost when the tracking server is unreachable (:mod:`pipeline.tracking.sync` replays it).

One entry per run, ``<root>/.mlflow-spool/<id>/``:

- ``journal.jsonl``: one JSON record per line, appended and flushed as the run logs, so a killed process
  leaves every record it wrote (a torn line is skipped when read);
- ``files/<n>/``: copies of the artifacts the server did not get, each complete before its record;
- ``lock``: held (``flock``) by the process that writes the entry, so a sync never replays a run that is
  still running; the kernel releases it when that process dies.

Records, by ``op``: ``start`` (id, uri, experiment, run_name, parent, start_time), ``created`` (run_id on
the server), ``params``, ``tags``, ``metrics`` (points ``[key, value, timestamp_ms, step]``), ``artifact``
(files ``[artifact path, local path, size]``), ``inputs`` (dataset inputs, :mod:`pipeline.tracking.datasets`),
``model`` (a checkpoint to log and register), ``evaluated`` (test metrics of a registered model) and ``end``
(status, end_time). ``tags``, ``metrics``, ``artifact`` and ``end`` carry ``run``: None for the entry's own
run, else a reference to another run: a server run id, ``spool:<id>`` (a spooled run, resolved once synced)
or ``group:<key>`` (the entry's group parent).
``synced/<id>`` holds the server run id of every synced entry, so ``spool:<id>`` stays resolvable.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable

SPOOL_DIR = ".mlflow-spool"
SPOOL_REF = "spool:"
GROUP_REF = "group:"
REF_TAGS = ("mlflow.parentRunId",)  # tags whose value is a run reference


def spool_dir(root: Path) -> Path:
    return root / SPOOL_DIR


class SpoolEntry:
    """One spooled run. Not thread-safe; one writer at a time (the lock holder)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock_fd: int | None = None
        self._journal: Any = None

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def ref(self) -> str:
        return SPOOL_REF + self.id

    @classmethod
    def create(cls, root: Path, header: dict[str, Any]) -> "SpoolEntry":
        """A new entry, locked, with its ``start`` record; built under a hidden name and renamed, so a
        listing never sees it half made."""
        entry_id = uuid.uuid4().hex
        base = spool_dir(root)
        tmp = base / f".{entry_id}.tmp"
        (tmp / "files").mkdir(parents=True)
        entry = cls(tmp)
        if not entry.lock():
            raise AssertionError("a new spool entry is locked by another process")
        entry.append({"op": "start", "id": entry_id, **header})
        os.replace(tmp, base / entry_id)
        entry.path = base / entry_id
        return entry

    def lock(self) -> bool:
        """Take the entry's lock without waiting; False if another process holds it (or it is gone)."""
        try:
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def release(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to the OS (a killed process keeps it)."""
        if self._journal is None:
            path = self.path / "journal.jsonl"
            torn = path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
            self._journal = open(path, "a", encoding="utf-8")
            if torn:  # a writer died mid-line: end that line, so it stays one unreadable line
                self._journal.write("\n")
        self._journal.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._journal.flush()

    def header(self) -> dict[str, Any] | None:
        """The ``start`` record, or None if the entry is gone or has none."""
        try:
            with open(self.path / "journal.jsonl", encoding="utf-8") as journal:
                first = json.loads(journal.readline())
        except (OSError, json.JSONDecodeError):
            return None
        return first if first.get("op") == "start" else None

    def records(self) -> list[dict[str, Any]]:
        """Every complete record, in order (unreadable lines, torn by a killed writer, are skipped)."""
        path = self.path / "journal.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def store(self, source: Path, artifact_path: str | None) -> list[list[Any]]:
        """Copy a file or a directory into the entry: ``[artifact file path, local path, size]`` per file,
        laid out as MLflow's ``log_artifact``/``log_artifacts`` would put them under ``artifact_path``."""
        files_dir = self.path / "files"
        slot = str(sum(1 for p in files_dir.iterdir() if not p.name.startswith(".")))
        tmp = files_dir / f".{slot}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if source.is_dir():
            shutil.copytree(source, tmp)
        else:
            tmp.mkdir()
            shutil.copy2(source, tmp / source.name)
        os.replace(tmp, files_dir / slot)
        prefix = f"{artifact_path.strip('/')}/" if artifact_path else ""
        files = sorted(p.relative_to(files_dir / slot).as_posix() for p in (files_dir / slot).rglob("*") if p.is_file())
        return [[prefix + rel, f"files/{slot}/{rel}", (files_dir / slot / rel).stat().st_size] for rel in files]

    def mark_synced(self, run_id: str) -> None:
        """Record the server run id of this entry, then remove it (still holding its lock)."""
        synced = self.path.parent / "synced"
        synced.mkdir(exist_ok=True)
        tmp = synced / f".{self.id}.tmp"
        tmp.write_text(run_id)
        os.replace(tmp, synced / self.id)
        self.remove()

    def remove(self) -> None:
        """Delete the entry: renamed out of the listing first, so an interrupted delete leaves no entry."""
        trash = self.path.parent / f".{self.id}.trash"
        os.replace(self.path, trash)
        self.path = trash
        self.release()
        shutil.rmtree(trash, ignore_errors=True)


def pending_entries(root: Path) -> list[SpoolEntry]:
    """The spooled runs under ``root``, oldest first (leftovers of interrupted deletes are cleared)."""
    base = spool_dir(root)
    if not base.is_dir():
        return []
    entries = []
    for path in base.iterdir():
        if path.name.endswith(".trash"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_dir() and not path.name.startswith(".") and path.name != "synced":
            entries.append(SpoolEntry(path))
    return sorted(entries, key=lambda e: ((e.header() or {}).get("start_time", 0), e.id))


def synced_run_id(root: Path, entry_id: str) -> str | None:
    """The server run id of a synced entry, or None."""
    path = spool_dir(root) / "synced" / entry_id
    return path.read_text().strip() if path.is_file() else None


def references(records: Iterable[dict[str, Any]]) -> set[str]:
    """The ``spool:`` references of other runs in an entry's records."""
    refs = set()
    for record in records:
        tags = record.get("tags") or {}
        values = [record.get("run"), record.get("model_run"), *(tags.get(k) for k in REF_TAGS)]
        refs |= {v for v in values if isinstance(v, str) and v.startswith(SPOOL_REF)}
    return refs
