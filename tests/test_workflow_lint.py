"""`snakemake --lint` finds nothing to complain about in the workflow (a tiny demo config)."""

from __future__ import annotations

from workflow_util import snakemake, tiny_demo_config


def test_lint_is_clean(tmp_path):
    tiny_demo_config(tmp_path)
    result = snakemake(tmp_path, "--lint", check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 0 and "Lints for" not in text, f"snakemake --lint:\n{text[-6000:]}"
    assert not (tmp_path / "results").exists() and not (tmp_path / "demo_data").exists(), "lint must not run jobs"
