"""The dose-influence cache: where it lives, how big it may grow, what it holds.

What: the files ``dij.dij_cached`` and ``ion_dij.ion_dij_cached`` keep, ``<key>.npz``,
``<key>.<part>.npz`` and ``<key>.json``, grouped into entries by ``key``: a SHA-256 (hex) of the CT
content, grid, masks, beams and every physics constant and option that changes the matrix. Why:
computing a matrix takes minutes, a re-plan of the same geometry should not; and the key carries no
patient or study identifier (the json holds none either), so the cache says nothing about who was
planned.

Where: ``configure(directory=…)`` (the CLI's ``--cache-dir``), else ``$RTAUTOPLAN_CACHE``, else
``~/.cache/rtautoplan/dij``. How big: ``configure(max_bytes=…)``, else ``$RTAUTOPLAN_CACHE_MAX_MB``,
else 2048 MB; after every write the least recently used entries (modification time, refreshed on
every hit) are removed until the cache fits (the entry just written is kept even if alone it is
larger). ``rtautoplan cache info|clear`` shows or empties it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_MB = 2048
_KEY = re.compile(r"[0-9a-f]{64}")
_STALE_TMP_S = 3600.0  # a writer's temporary file older than this was left by a crash
_settings: dict[str, object] = {"directory": None, "max_bytes": None}


@dataclass(frozen=True)
class Entry:
    """One cached matrix: its key, files, total size (bytes) and last use (epoch seconds)."""

    key: str
    files: tuple[Path, ...]
    size: int
    last_used: float


@dataclass(frozen=True)
class CacheInfo:
    """What ``rtautoplan cache info`` prints: folder, number of entries, bytes used and the cap."""

    directory: Path
    entries: int
    size: int
    max_bytes: int


def configure(directory: str | Path | None = None, max_bytes: int | None = None) -> None:
    """Set this process's cache folder and size cap (None: the environment's or the default)."""
    _settings["directory"] = Path(directory) if directory is not None else None
    _settings["max_bytes"] = max_bytes


def cache_dir() -> Path:
    if _settings["directory"] is not None:
        return _settings["directory"]
    env = os.environ.get("RTAUTOPLAN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rtautoplan" / "dij"


def max_bytes() -> int:
    if _settings["max_bytes"] is not None:
        return int(_settings["max_bytes"])
    env = os.environ.get("RTAUTOPLAN_CACHE_MAX_MB")
    return int(float(env) * 2**20) if env else DEFAULT_MAX_MB * 2**20


def entries(directory: Path) -> list[Entry]:
    """The entries in ``directory``, least recently used first; stale temporary files are removed."""
    groups: dict[str, list[tuple[Path, os.stat_result]]] = {}
    now = time.time()
    for path in Path(directory).glob("*") if Path(directory).is_dir() else ():
        key = path.name[:64]
        try:
            stat = path.stat()
        except FileNotFoundError:  # evicted or renamed meanwhile by another process
            continue
        if path.name.endswith(".tmp"):
            if now - stat.st_mtime > _STALE_TMP_S:
                path.unlink(missing_ok=True)
            continue
        if _KEY.fullmatch(key) and path.is_file():
            groups.setdefault(key, []).append((path, stat))
    found = [Entry(k, tuple(p for p, _ in v), sum(s.st_size for _, s in v), max(s.st_mtime for _, s in v))
             for k, v in groups.items()]
    return sorted(found, key=lambda e: e.last_used)


def touch(directory: Path, key: str) -> None:
    """Mark ``key`` as just used (its files' modification time): LRU order."""
    for path in Path(directory).glob(f"{key}*"):
        if not path.name.endswith(".tmp"):
            try:
                os.utime(path)
            except OSError:
                pass


def evict(directory: Path, limit: int | None = None, keep: str | None = None) -> list[Entry]:
    """Remove least recently used entries until the cache holds at most ``limit`` bytes (default:
    ``max_bytes()``); ``keep`` (a key) is never removed. Returns what was removed."""
    limit = max_bytes() if limit is None else limit
    found = entries(directory)
    total = sum(e.size for e in found)
    removed = []
    for entry in found:
        if total <= limit:
            break
        if entry.key == keep:
            continue
        for path in entry.files:
            path.unlink(missing_ok=True)
        total -= entry.size
        removed.append(entry)
    return removed


def info(directory: Path | None = None) -> CacheInfo:
    directory = cache_dir() if directory is None else Path(directory)
    found = entries(directory)
    return CacheInfo(directory, len(found), sum(e.size for e in found), max_bytes())


def clear(directory: Path | None = None) -> int:
    """Remove every entry (and temporary file) of the cache; returns how many entries there were."""
    directory = cache_dir() if directory is None else Path(directory)
    n = len(entries(directory))
    if directory.is_dir():
        for path in directory.iterdir():
            if _KEY.fullmatch(path.name[:64]) and path.is_file():
                path.unlink(missing_ok=True)
            elif path.is_dir() and _KEY.fullmatch(path.name[:64]):
                shutil.rmtree(path, ignore_errors=True)
    return n
