# Input functions and values of the train rules (train.smk includes this file; Snakemake's
# linter wants functions and rules in separate files).

def train_inputs(wildcards):
    if wildcards.model in SLIDE_MODELS and not HAS_SLIDES:
        raise WorkflowError(
            f"model {wildcards.model} needs slides but 'samples' is empty or unset; {NO_SLIDES_FIX}, "
            "or ask for a genomics-only model (train.models: [snn])"
        )
    inputs = {
        "summary": str(LAYOUT.genomics.summary),
        "targets": str(LAYOUT.genomics.fold(wildcards.fold).targets),
    }
    if wildcards.model in SLIDE_MODELS:
        inputs["features"] = [feature_store(s) for s in SLIDES]
    return inputs


FOLD = LAYOUT.model_fold(wildcard("model"), wildcard("fold"))  # the path pattern of one training job
