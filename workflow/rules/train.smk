# Stage 4: one job per model and fold; then one summary per model.
FEATURES_DIR = OUT / "features" / ENCODER_DIR


def train_inputs(wildcards):
    inputs = {
        "summary": str(OUT / "genomics" / "summary.json"),
        "targets": str(OUT / "genomics" / f"fold{wildcards.fold}" / "targets.json"),
    }
    if wildcards.model in SLIDE_MODELS:
        inputs["features"] = expand(str(FEATURES_DIR / "{slide}.zarr"), slide=SLIDES)
    return inputs


if MODELS:

    rule train:
        input:
            unpack(train_inputs),
        output:
            result=str(OUT / "models" / "{model}" / "fold{fold}" / "result.json"),
            final=str(OUT / "models" / "{model}" / "fold{fold}" / "checkpoint_final.pt"),
            predictions=str(OUT / "models" / "{model}" / "fold{fold}" / "predictions_val.csv"),
        params:
            features=lambda w: f"--features-dir {FEATURES_DIR}" if w.model in SLIDE_MODELS else "",
            settings=settings("train"),
        log:
            logfile("train", "{model}_fold{fold}"),
        benchmark:
            benchfile("train", "{model}_fold{fold}")
        threads: 2
        resources:
            mem_mb=8000,
            runtime=120,
        shell:
            "ghanet train --model {wildcards.model} --fold {wildcards.fold}"
            " --genomics-dir {OUT}/genomics {params.features}"
            " --out {OUT}/models/{wildcards.model}/fold{wildcards.fold}"
            " --settings {params.settings:q} > {log} 2>&1"

    rule summarize:
        input:
            expand(str(OUT / "models" / "{{model}}" / "fold{fold}" / "result.json"), fold=FOLDS),
        output:
            str(OUT / "models" / "{model}" / "summary.json"),
        log:
            logfile("summarize", "{model}"),
        benchmark:
            benchfile("summarize", "{model}")
        localrule: True
        shell:
            "ghanet summarize --model {wildcards.model} --models-dir {OUT}/models/{wildcards.model}"
            " > {log} 2>&1"
