# Input functions and values of the infer rules (infer.smk includes this file; Snakemake's
# linter wants functions and rules in separate files).

INFER = config["infer"]


def models_dir_for_inference():
    return INFER["models_dir"] or (str(LAYOUT.models_dir) if MODELS else None)


def infer_model_inputs(wildcards):
    if INFER["models_dir"]:
        return []  # an earlier run's models: not made by this workflow
    return [str(LAYOUT.model_summary(INFER["model"]))]
