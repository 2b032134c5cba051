# Stage 4: one job per model and fold (train_fold); then the model's summary (train), so
# `--until train` ends with every model's summary.json. `--forcerun train_fold` retrains.

include: "inputs/train.smk"


if MODELS:

    rule train_fold:
        input:
            unpack(train_inputs),
        output:
            result=str(FOLD.result),
            final=str(FOLD.checkpoint("final")),
            predictions=str(FOLD.predictions),
        params:
            genomics_dir=LAYOUT.genomics.dir,
            out_dir=lambda w: LAYOUT.model_fold(w.model, w.fold).dir,
            features=lambda w: f"--features-dir {FEATURES_DIR}" if w.model in SLIDE_MODELS else "",
            settings=settings("train"),
        log:
            logfile("train", "{model}_fold{fold}"),
        benchmark:
            benchfile("train", "{model}_fold{fold}")
        # One thread per job: small bags gain nothing from more, and two jobs share 2 cores.
        threads: 1
        resources:
            mem_mb=8000,
            runtime=120,
            # `--resources gpu=N`: at most N GPU jobs at once, each claims its own GPU (devices.py)
            gpu=0 if config["train"]["device"] == "cpu" else 1,
        conda:
            "../../envs/train.yaml"
        shell:
            "ghanet train --model {wildcards.model} --fold {wildcards.fold}"
            " --genomics-dir {params.genomics_dir} {params.features}"
            " --out {params.out_dir}"
            " --settings {params.settings:q} > {log} 2>&1"

    rule train:
        input:
            [str(LAYOUT.model_fold(wildcard("model"), k).result) for k in FOLDS],
        output:
            str(LAYOUT.model_summary(wildcard("model"))),
        params:
            models_dir=lambda w: LAYOUT.model(w.model).dir,
        log:
            logfile("summarize", "{model}"),
        benchmark:
            benchfile("summarize", "{model}")
        localrule: True
        conda:
            "../../envs/train.yaml"
        shell:
            "ghanet summarize --model {wildcards.model} --models-dir {params.models_dir}"
            " > {log} 2>&1"
