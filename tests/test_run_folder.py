"""The output folder is the run's: system folders and other people's files are refused before any job,
and a live run holds its folder so that a second run on it is refused at once, naming the holder."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess

import pytest
from test_reliability_concurrency import start_snakemake, wait_for
from workflow_util import snakemake, tiny_demo_config

from ghanet_pipeline.io import run_folder
from ghanet_pipeline.runtime import locks


@pytest.mark.parametrize("folder", ["/", "/usr", "~"])
def test_system_folders_are_refused_before_any_job(tmp_path, folder):
    tiny_demo_config(tmp_path, output_dir=folder)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert "a system or home folder" in result.stdout + result.stderr


def test_a_folder_of_someone_elses_files_is_refused_and_left_alone(tmp_path):
    theirs = tmp_path / "theirs"
    (theirs / "status").mkdir(parents=True)
    (theirs / "predictions.csv").write_text("mine\n")
    (theirs / "status" / "other.json").write_text("{}\n")
    tiny_demo_config(tmp_path, output_dir=str(theirs))
    result = snakemake(tmp_path, "--cores", "1", check=False)
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "no run of ghanet-pipeline made" in log and f"touch {theirs / run_folder.MARKER}" in log
    assert sorted(p.name for p in theirs.rglob("*")) == ["other.json", "predictions.csv", "status"]
    assert (theirs / "predictions.csv").read_text() == "mine\n"
    # An empty folder is fine, and so is a marked one (an earlier run's).
    (theirs / run_folder.MARKER).touch()
    assert run_folder.check(theirs) == theirs.resolve()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_folder.check(empty) == empty.resolve()


def _hold(folder: str, ready, release) -> None:
    run_folder.claim(folder)
    ready.set()
    release.wait(60)
    os._exit(0)


def test_claim_marks_the_folder_and_a_killed_holder_frees_it(tmp_path):
    folder = tmp_path / "out"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(folder), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        assert (folder / run_folder.MARKER).is_file()
        with pytest.raises(run_folder.RunFolderError) as err:
            run_folder.claim(folder)
        assert f"pid {holder.pid} on {socket.gethostname()}" in str(err.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(30)
    fd = run_folder.claim(folder)  # the kernel released the dead holder's lock
    locks.release(folder / run_folder.LOCK, fd)


def test_second_run_on_the_same_output_dir_is_refused_at_once(tmp_path):
    """Two working folders (so Snakemake's own locks do not meet), one output_dir: the issue's case."""
    out = tmp_path / "shared_results"
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    for work in (first_dir, second_dir):
        work.mkdir()
        tiny_demo_config(work, output_dir=str(out), demo={"patients": 5, "seed": 3})
    first = start_snakemake(first_dir, "--cores", "1", "--until", "tissue")
    try:
        lock = out / run_folder.LOCK
        assert wait_for(lambda: lock.is_file() and lock.read_text().startswith("pid"), 120, first), \
            f"the first run never claimed {out} (exit {first.poll()})"
        second = start_snakemake(second_dir, "--cores", "1", "--until", "tissue")
        stdout, stderr = second.communicate(timeout=120)
        assert first.poll() is None, "the first run ended before the second was checked: make it slower"
        assert second.returncode != 0
        assert "is in use by another run" in stdout + stderr
        assert f"pid {first.pid} on {socket.gethostname()}" in stdout + stderr
        assert not (second_dir / "demo_data").exists(), "the refused run must not start any job"
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)
        try:
            first.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            first.kill()
            first.communicate()
