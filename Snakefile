# ghanet-pipeline: raw whole-slide images -> G-HANet prognosis model -> slide-only predictions.
# Stages, one rule file each: tissue, features, genomics, train, infer, report (see README).
import os

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")

# conda envs (--sdm conda) install this package from here (envs/*.post-deploy.sh).
os.environ.setdefault("GHANET_REPO", workflow.basedir)


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/tissue.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/genomics.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
