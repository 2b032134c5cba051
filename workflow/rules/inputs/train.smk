# Input functions and values of the train rules (train.smk includes this file; Snakemake's
# linter wants functions and rules in separate files).

def train_inputs(wildcards):
    """train_fold: the inputs of one fold."""
    return fold_inputs(wildcards.model, [wildcards.fold])


def train_model_inputs(wildcards):
    """train_model: the inputs of every fold of the model."""
    return fold_inputs(wildcards.model, FOLDS)


def fold_inputs(model, folds):
    if model in SLIDE_MODELS and not HAS_SLIDES:
        raise WorkflowError(
            f"model {model} needs slides but 'samples' is empty or unset; {NO_SLIDES_FIX}, "
            "or ask for a genomics-only model (train.models: [snn])"
        )
    inputs = {
        "summary": str(LAYOUT.genomics.summary),
        "targets": [str(LAYOUT.genomics.fold(k).targets) for k in folds],
    }
    if model in SLIDE_MODELS:
        inputs["features"] = [feature_store(s) for s in SLIDES]
    return inputs


FOLD = LAYOUT.model_fold(wildcard("model"), wildcard("fold"))  # the path pattern of one training job
