"""The output folder belongs to one run of this pipeline.

A run marks its ``output_dir`` with ``.ghanet-run`` the first time it executes, and holds
``.ghanet-run.lock`` for as long as it runs. So the workflow refuses, before any job starts:
``/`` and system folders; a non-empty folder without the marker (someone else's files, which
stages would overwrite and the report would list); and a second run on a folder that a live run
holds (named by pid and host). The Snakefile calls ``check`` at parse time and ``claim`` from
``onstart``; the lock goes when the Snakemake process ends, however it ends.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ghanet_pipeline import __version__
from ghanet_pipeline.runtime import locks

MARKER = ".ghanet-run"
LOCK = ".ghanet-run.lock"
# Folders no run may write into directly (the folder itself; sub-folders of most are fine).
SYSTEM_FOLDERS = frozenset(
    Path(p) for p in ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/media", "/mnt", "/opt",
                      "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/tmp")
)


class RunFolderError(ValueError):
    """``output_dir`` cannot be used by this run (the message says why and what to do)."""


def _resolved(output_dir: str | Path) -> Path:
    try:
        return Path(output_dir).expanduser().resolve()
    except (RuntimeError, OSError) as err:  # a symlink loop, an unreadable parent
        raise RunFolderError(f"output_dir '{output_dir}' cannot be resolved ({err}); choose a plain folder") from err


def check(output_dir: str | Path) -> Path:
    """Refuse an ``output_dir`` that is not (or cannot become) this pipeline's; return it resolved."""
    folder = _resolved(output_dir)
    fix = "set output_dir to a new or empty folder (for example output_dir: results)"
    if folder in SYSTEM_FOLDERS or folder == Path.home().resolve():
        raise RunFolderError(f"output_dir '{output_dir}' is {folder}, a system or home folder; {fix}")
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"output_dir '{output_dir}' ({folder}) is a file, not a folder; {fix}")
    if folder.is_dir() and not (folder / MARKER).is_file() and any(folder.iterdir()):
        raise RunFolderError(
            f"output_dir '{output_dir}' ({folder}) already holds files that no run of ghanet-pipeline made "
            f"(it has no {MARKER} marker), and the stages would overwrite them; {fix}. If it is the output of "
            f"an earlier ghanet-pipeline run made before markers existed, mark it: touch {folder / MARKER}"
        )
    return folder


def claim(output_dir: str | Path) -> int:
    """Check ``output_dir``, lock it for this process's lifetime and mark it; return the lock's fd."""
    folder = check(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = locks.acquire(folder / LOCK)
    except locks.LockHeldError as err:
        raise RunFolderError(
            f"output_dir {folder} is in use by another run: {err.holder} holds {err.lock}. Wait for it to finish, "
            "or stop it; two runs must not write one output folder (a killed run releases it by itself)"
        ) from err
    marker = folder / MARKER
    if not marker.is_file():
        marker.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid(),
                                      "package_version": __version__}) + "\n")
    return fd
