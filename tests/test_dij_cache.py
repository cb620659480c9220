"""The dose-influence cache: bounded by LRU eviction, configurable, ``rtautoplan cache info|clear``."""

from __future__ import annotations

import os

from rtautoplan.cli import main
from rtautoplan.physics import cache


def _entry(folder, key: str, size: int, used: float) -> None:
    for suffix in (".npz", ".json"):
        path = folder / f"{key}{suffix}"
        path.write_bytes(bytes(size // 2))
        os.utime(path, (used, used))


def test_least_recently_used_entries_go_first(tmp_path):
    keys = [f"{i:064x}" for i in range(4)]
    for i, key in enumerate(keys):
        _entry(tmp_path, key, 1000, 1_000_000 + i)
    (tmp_path / "notes.txt").write_text("not an entry")
    cache.touch(tmp_path, keys[0])  # used just now: the newest
    removed = cache.evict(tmp_path, limit=2000, keep=keys[3])
    assert [e.key for e in removed] == keys[1:3]
    assert {e.key for e in cache.entries(tmp_path)} == {keys[0], keys[3]}
    assert (tmp_path / "notes.txt").exists()


def test_cache_command_reports_and_clears(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RTAUTOPLAN_CACHE", str(tmp_path))
    monkeypatch.setenv("RTAUTOPLAN_CACHE_MAX_MB", "1")
    _entry(tmp_path, "a" * 64, 4000, 1_000_000)
    try:
        assert main(["cache", "info"]) == 0
        assert "1 entries" in capsys.readouterr().out
        assert main(["cache", "clear"]) == 0 and not list(tmp_path.iterdir())
    finally:
        cache.configure()
