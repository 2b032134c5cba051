"""The demo workflow through workflow/profiles/slurm on a real SLURM (tests/slurm/up.sh).

Start the cluster first (`sudo tests/slurm/up.sh`; CI does this before pytest). Without
`sinfo` the test skips and says so.

The profile is used as shipped except for what its comments tell a user to edit for their
cluster: the account and partitions (here: up.sh's account `ghanet` and the default partition),
and sizes a 2-core test node cannot give (mem_mb, cpus_per_gpu, threads, the first status
check). GPU requests are kept: up.sh gives the node fake GPUs (gres devices that are copies of
/dev/null), so `--gpus=1` is really scheduled; the jobs compute on the CPU (features.device: cpu).

Then every job Snakemake did not run locally must appear in `sacct` as a COMPLETED SLURM job
of this run, with the rule and wildcards in its comment, and the GPU rules with a gres/gpu;
tissue jobs are submitted in batches (the profile's `groups`/`group-components`), so the
submissions are counted against the batching and printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from workflow_util import REPO, tiny_demo_config

pytestmark = pytest.mark.slurm

PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"
TEST_ACCOUNT = "ghanet"  # made by tests/slurm/up.sh
GPU_RULES = {"features", "train_fold"}


def _slurm_partition() -> str:
    """The cluster's default partition, or skip when no SLURM is up."""
    if shutil.which("sinfo") is None:
        pytest.skip("SLURM is not up: `sinfo` not found (start a test cluster with: sudo tests/slurm/up.sh)")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.skip("SLURM is not up: sinfo timed out (tests/slurm/up.sh starts a test cluster)")
    if out.returncode != 0:
        pytest.skip(f"SLURM is not up: sinfo failed: {out.stderr.strip()} (tests/slurm/up.sh starts one)")
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    usable = [p for p, state in rows if state in ("idle", "mixed")]
    if not usable:
        pytest.skip(f"SLURM has no idle node: sinfo says {rows} (tests/slurm/up.sh)")
    default = [p for p in usable if p.endswith("*")]
    if subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True).returncode != 0:
        pytest.skip("SLURM accounting is not up: `sacct` fails, and the executor would poll forever (tests/slurm/up.sh)")
    return (default or usable)[0].rstrip("*")


def site_profile(folder: Path, partition: str) -> Path:
    """The shipped SLURM profile with the site-specific values a user edits, set for the test node."""
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    for rule in GPU_RULES:
        assert profile["set-resources"][rule].get("gpu") == 1, f"the profile should give {rule} one GPU"
    defaults = profile["default-resources"]
    assert "EDIT" in str(defaults["slurm_account"]), "the shipped account should be a placeholder to edit"
    defaults.update(slurm_account=TEST_ACCOUNT, slurm_partition=partition, mem_mb="1000 * attempt", runtime=10)
    for resources in profile["set-resources"].values():
        if "slurm_partition" in resources:
            resources["slurm_partition"] = partition
        if "cpus_per_gpu" in resources:
            resources["cpus_per_gpu"] = 1
        if "cpus_per_task" in resources:
            resources["cpus_per_task"] = 1
        resources["mem_mb"] = "1500 * attempt"
        resources["runtime"] = 10
    profile["set-threads"] = {rule: 1 for rule in profile.get("set-threads", {})}
    # a batch (group job) runs its jobs side by side up to this memory: 2 x 1500 MB, 2 CPUs, what
    # the 2-core test node has (the shipped 64000 would ask for one CPU per slide here)
    assert profile["groups"]["tissue"] in profile["group-components"], "tissue should be batched"
    profile["resources"] = {"mem_mb": 3000}
    profile["slurm-init-seconds-before-status-checks"] = 2
    profile["latency-wait"] = 5
    profile["jobs"] = 4
    profile["retries"] = 0  # a failure should show, not be retried
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def _sacct(job_ids: list[str]) -> list[dict]:
    fields = ["JobID", "JobName", "Comment", "State", "ExitCode", "AllocTRES", "Account", "Partition"]
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(f + "%300" for f in fields)],
        capture_output=True, text=True, check=True,
    ).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def _planned_jobs(stdout: str) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """(remote jobs as rule_<name>[_wildcards_<values>], local rule names, and per group job
    submitted (a batch), its group name -> the rules of its member jobs) from Snakemake's log."""
    remote, local, batches = [], [], []
    for block in re.split(r"\n(?=\[[A-Z][a-z]{2} [A-Z][a-z]{2} )", stdout):
        group = re.match(r"\[[^\]]+\] Group job (\w+)", block)
        if group:  # one submission running several jobs; its members are indented
            batches.append((group.group(1), re.findall(r"^\s+rule (\w+):", block, flags=re.M)))
            continue
        m = re.search(r"^(local)?rule (\w+):", block, flags=re.M)
        if not m:
            continue
        if m.group(1):
            local.append(m.group(2))
            continue
        wildcards = re.search(r"^\s+wildcards: (.+)$", block, flags=re.M)
        values = "_".join(kv.split("=", 1)[1] for kv in wildcards.group(1).split(", ")) if wildcards else ""
        remote.append(f"rule_{m.group(2)}" + (f"_wildcards_{values}" if values else ""))
    return remote, local, batches


def test_demo_workflow_runs_as_slurm_jobs(tmp_path):
    partition = _slurm_partition()
    work = tmp_path / "run"
    work.mkdir()
    tiny_demo_config(
        work,
        demo={"patients": 5},
        genomics={"n_folds": 2, "n_bins": 2},
        train={"models": ["snn"], "epochs": 1},
        features={"encoder": "test_efficientnet", "weights": "random", "batch_size": 16, "num_workers": 0,
                  "device": "cpu"},
    )
    profile = site_profile(tmp_path / "profile", partition)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "config.yaml"), "--profile", str(profile)]
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    log = result.stdout + result.stderr
    (tmp_path / "snakemake.log").write_text(log)
    assert result.returncode == 0, f"SLURM run failed after {seconds:.0f} s:\n{log[-8000:]}"
    assert (work / "results" / "report" / "index.html").is_file()

    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", log)
    remote, local, batches = _planned_jobs(log)
    from ghanet_pipeline.demo import cohort as demo

    n_slides = len(demo.plan(5, 3, work / "demo_data"))
    shipped = yaml.safe_load(PROFILE.read_text())
    batch_size = shipped["group-components"][shipped["groups"]["tissue"]]
    rules = [name.split("_wildcards_")[0] for name in remote]
    tissue_batches = [members for group, members in batches if group == shipped["groups"]["tissue"]]
    assert "rule_tissue" not in rules, "tissue jobs should be submitted in batches (groups), not one by one"
    assert [len(m) for m in tissue_batches] == [n_slides] and set(tissue_batches[0]) == {"tissue"}, batches
    assert rules.count("rule_features") == n_slides, remote
    assert rules.count("rule_train_fold") == 2 and "rule_demo_cohort" in rules, remote
    assert {"report", "manifest", "train", "genomics"} <= set(local), f"local rules ran remotely? local={local}"

    rows = _sacct(job_ids)
    n_jobs = len(remote) + sum(len(m) for _, m in batches)
    print(f"SLURM run: {seconds:.0f} s, {len(job_ids)} submissions for {n_jobs} jobs (tissue: {n_slides} jobs in "
          f"{len(tissue_batches)} batch(es) of up to {batch_size}; without batching {n_jobs}), {len(rows)} SLURM "
          f"jobs in sacct, local rules: {sorted(set(local))}")
    expected = len(remote) + -(-n_slides // batch_size)
    assert len(job_ids) == expected == len(rows), (job_ids, remote, batches, rows)
    singles = sorted(r["Comment"] for r in rows if not r["Comment"].startswith(f"rule_{shipped['groups']['tissue']}"))
    assert singles == sorted(remote), "sacct's jobs differ from the planned remote jobs"
    assert len({r["JobName"] for r in rows}) == 1, "one Snakemake run names all its jobs with its run id"
    for row in rows:
        assert row["State"] == "COMPLETED" and row["ExitCode"] == "0:0", row
        assert row["Account"] == TEST_ACCOUNT and row["Partition"] == partition, row
        rule = row["Comment"].split("_wildcards_")[0].removeprefix("rule_")
        assert ("gres/gpu=1" in row["AllocTRES"]) == (rule in GPU_RULES), row  # batches: tissue, no GPU
