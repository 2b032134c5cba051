# ghanet-pipeline: raw whole-slide images -> G-HANet prognosis model -> slide-only predictions.
# Stages, one rule file each: tissue, features, genomics, train, infer, report (see README).
import os

from snakemake.utils import min_version, validate

from ghanet_pipeline.config import ConfigError, coerce_overrides

min_version("9.0")


configfile: "config.yaml"


# `--config` values arrive as strings (YAML BaseLoader); give them the schema's types first, so
# `--config demo='{"enabled": false}' samples=null` means what the same keys in a configfile mean.
try:
    config.update(coerce_overrides(config))
except ConfigError as err:
    raise WorkflowError(f"invalid --config value: {err}") from None
validate(config, "workflow/schemas/config.schema.yaml")

# conda envs (--sdm conda) install this package from here (envs/*.post-deploy.sh).
os.environ.setdefault("GHANET_REPO", workflow.basedir)


RUN_FOLDER_LOCK = []  # the lock's file descriptor, once onstart has claimed output_dir


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/tissue.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/genomics.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/report.smk"


onstart:
    # Mark output_dir as this pipeline's and hold its lock while this Snakemake process lives, so a
    # second run on the same output_dir is refused at once (the kernel frees the lock on any exit).
    try:
        RUN_FOLDER_LOCK.append(run_folder.claim(OUT))
    except run_folder.RunFolderError as err:
        raise WorkflowError(str(err)) from None


rule all:
    input:
        all_targets(),
    default_target: True
