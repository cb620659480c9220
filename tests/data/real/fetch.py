"""Fetch the public DICOM-RT exports the held-out tests plan (tests/test_real_exports.py).

The files are not committed (their licences allow it, but this repository keeps third-party data out
of its history): this script downloads them from the projects' GitHub repositories at a pinned commit,
checks each file's SHA-256 and writes them under ``tests/data/real/cache/`` (or ``--to DIR``; the
tests read ``$RTAUTOPLAN_REAL_EXPORTS`` when it is set). ``--from-git NAME=DIR`` copies from a local
clone instead of the network (e.g. ``--from-git dicompyler-core=~/src/dicompyler-core``).
Sources and licences: tests/data/real/README.md.

    python tests/data/real/fetch.py
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(__file__).resolve().parent / "cache"


@dataclass(frozen=True)
class Source:
    """One public repository at a pinned commit, and the files taken from it (path → local name, SHA-256)."""

    name: str
    repo: str
    commit: str
    files: tuple[tuple[str, str, str], ...]


SOURCES = (
    Source("dicompyler-core", "dicompyler/dicompyler-core", "0d5729d7a2412e1c3f1e4cb4f6b07f7407eb8b06", (
        ("tests/testdata/example_data/ct.0.dcm", "ct.0.dcm",
         "6eb080ed6a1f4c850706418582a0b40e6d10dc831c7f3e3fc7d7b0bdd404e542"),
        ("tests/testdata/example_data/rtss.dcm", "rtss.dcm",
         "8fe3e3a20d1acf911f5c284dc40288d46f97acd43e4a63753cd6e3e1dac398cb"),
        ("tests/testdata/example_data/rtplan.dcm", "rtplan.dcm",
         "d518fc976a225cbf05f8747d0067b52e7b1faa147da8e53b2b0bce01eaa21977"))),
    Source("slicerrt", "SlicerRt/SlicerRT", "e24f2a0419e853e9560f9d92e00d3e77f4f4b073", (
        ("Testing/Data/DICOM/EclipseProstatePhantomRtData/RS.1.2.246.352.71.4.2088656855.2404649.20110920153449.dcm",
         "rtss.dcm", "3de77a83ab03a6131b4cc104ecc0d0eb32ac94d032e567fb2d6886056e53e333"),
        ("Testing/Data/DICOM/EclipseProstatePhantomRtData/RP.1.2.246.352.71.5.2088656855.377401.20110920153647.dcm",
         "rtplan.dcm", "f36a4f8482b5c9ed039dad3358df8a07075afbe5a5d4354323cb13fa2e9bdd09"))),
    Source("dicomrttool", "brianmanderson/Dicom_RT_and_Images_to_Mask", "bbcec7275aea41af0b783c7135e90f8281ea45f0", (
        ("AnonDICOM/CT.1.2.246.352.221.4626773895497922739.17556984125564420260.dcm",
         "ct_0.dcm", "477e89b79122e5d3f7b6e9141df5c4e155e71e0fefb0daef02405ea0f186a2d8"),
        ("AnonDICOM/CT.1.2.246.352.221.5016377589247482231.17397796449061008539.dcm",
         "ct_1.dcm", "2460a8cb0eae5ce9f3efbf231c3df9e0aab3ca1d49a714d80c81f8c3b3b98930"),
        ("AnonDICOM/CT.1.2.246.352.221.5412657151867525968.14004713486715152817.dcm",
         "ct_2.dcm", "a4bc614897dd8ada722f5e3d853e4d96c44e5ad2f20557dfc6e86ca841c8fc3b"),
        ("AnonDICOM/CT.1.2.246.352.221.5639662398897860285.10020668819012843167.dcm",
         "ct_3.dcm", "3120e0185f92a57c415408b27b9cb59d705bab6a845914247eb67076a74784d9"),
        ("AnonDICOM/RS.1.2.246.352.221.5295756759917696191.17297108549342758074.dcm",
         "rtstruct.dcm", "5bb70c8928aaa732c2efa54044141166957751d4eb8766f7ba8c900d131e817d"))),
    Source("rt-utils", "qurit/rt-utils", "026e6645e851dab7cea2c424165ffc62c38d34c6", (
        ("tests/mock_data/ct_1.dcm", "ct_1.dcm", "5a4b2fbb9ace7f9dd6bfcf438f82bf5a0867ce5220c143288e593084fb33c763"),
        ("tests/mock_data/ct_2.dcm", "ct_2.dcm", "a77ea1836fb99f623d41a2d2f464781fd0dbca2fa5488bdcfff5014858283440"),
        ("tests/mock_data/invalid_reference_rt.dcm", "rtstruct_mim.dcm",
         "d2389ed9574e70835fb2fd6fa65812948a8ed59ccd70a0d6284e0f2661abde66"),
        ("tests/oriented_data/0.dcm", "oblique_0.dcm",
         "195be699a282491af64dc276628f31c5404e7fa2421e89c5f273f43b50893716"),
        ("tests/oriented_data/1.dcm", "oblique_1.dcm",
         "8aa88e189005487e56f32d36065748fef9ec5d8af393ecce0e6600068198f612"),
        ("tests/oriented_data/2.dcm", "oblique_2.dcm",
         "642cb8e8210819958a2938fb421923d4b311def65d44280910270dbff98f43b7"))),
)


def _download(source: Source, path: str) -> bytes:
    url = f"https://raw.githubusercontent.com/{source.repo}/{source.commit}/{path}"
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def _from_git(clone: Path, source: Source, path: str) -> bytes:
    return subprocess.run(["git", "-C", str(clone), "show", f"{source.commit}:{path}"], check=True,
                          capture_output=True).stdout


def fetch(to: Path = CACHE, clones: dict[str, Path] | None = None) -> list[Path]:
    """Write every source's files to ``to/<source name>/``, each checked against its SHA-256."""
    clones = clones or {}
    written = []
    for source in SOURCES:
        folder = to / source.name
        if complete(folder, source):
            written += [folder / local for _, local, _ in source.files]
            continue
        partial = to / f".{source.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        clone = clones.get(source.name)
        for path, local, sha256 in source.files:
            data = _from_git(clone, source, path) if clone else _download(source, path)
            if hashlib.sha256(data).hexdigest() != sha256:
                raise SystemExit(f"{source.repo}@{source.commit[:7]}:{path}: SHA-256 differs from the pinned one")
            (partial / local).write_bytes(data)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)  # a source's folder exists only once all its files are in it
        written += [folder / local for _, local, _ in source.files]
    return written


def complete(folder: Path, source: Source) -> bool:
    """Whether ``folder`` holds every file of ``source``, each with its pinned SHA-256."""
    return all((folder / local).is_file() and hashlib.sha256((folder / local).read_bytes()).hexdigest() == sha256
               for _, local, sha256 in source.files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", type=Path, default=CACHE, help="where to write (default: %(default)s)")
    parser.add_argument("--from-git", action="append", default=[], metavar="NAME=DIR",
                        help="copy source NAME from a local git clone DIR instead of downloading")
    args = parser.parse_args(argv)
    clones = dict(item.split("=", 1) for item in args.from_git)
    try:
        paths = fetch(args.to, {name: Path(d).expanduser() for name, d in clones.items()})
    except (OSError, subprocess.CalledProcessError) as error:  # offline, or a clone without the commit
        print(f"not fetched: {error}", file=sys.stderr)
        return 1
    print(f"{len(paths)} files under {args.to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
