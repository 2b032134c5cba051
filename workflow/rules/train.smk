# Stage 4: the models x folds, then each model's summary (rule train), so `--until train` ends
# with every model's summary.json.
#
# train.one_job_per = fold: one job per model and fold (rule train_fold; folds in parallel).
# train.one_job_per = model: one job per model trains its folds one after another (rule
# train_model), paying a job's start-up once. Its outputs are `update()` outputs and the job keeps
# every fold that is complete and current (ghanet_pipeline.training.train.incomplete_reason: same
# fingerprint, newer than its inputs), so a rerun after a crash trains only the unfinished folds.
# `--forcerun train_fold` / `--forcerun train_model` reruns the jobs; with one_job_per: model it
# keeps the complete folds, so to retrain one fold delete its result.json.

include: "inputs/train.smk"

TRAIN_SETTINGS = settings("train")  # without one_job_per, which changes no result (config.SCHEDULING_KEYS)
TRAIN_GPUS = 0 if config["train"]["device"] == "cpu" else 1


if MODELS and config["train"]["one_job_per"] == "fold":

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
            settings=TRAIN_SETTINGS,
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
            gpu=TRAIN_GPUS,
        conda:
            "../../envs/train.yaml"
        shell:
            "ghanet train --model {wildcards.model} --fold {wildcards.fold}"
            " --genomics-dir {params.genomics_dir} {params.features}"
            " --out {params.out_dir}"
            " --settings {params.settings:q} > {log} 2>&1"


if MODELS and config["train"]["one_job_per"] == "model":

    rule train_model:
        input:
            unpack(train_model_inputs),
        output:
            [update(str(LAYOUT.model_fold(wildcard("model"), k).result)) for k in FOLDS],
            [update(str(LAYOUT.model_fold(wildcard("model"), k).checkpoint("final"))) for k in FOLDS],
            [update(str(LAYOUT.model_fold(wildcard("model"), k).predictions)) for k in FOLDS],
        params:
            genomics_dir=LAYOUT.genomics.dir,
            folds=" ".join(str(k) for k in FOLDS),
            out_dirs=lambda w: [str(LAYOUT.model_fold(w.model, k).dir) for k in FOLDS],
            features=lambda w: f"--features-dir {FEATURES_DIR}" if w.model in SLIDE_MODELS else "",
            settings=TRAIN_SETTINGS,
        log:
            logfile("train", "{model}"),
        benchmark:
            benchfile("train", "{model}")
        threads: 1
        resources:
            mem_mb=8000,
            runtime=120 * len(FOLDS),
            gpu=TRAIN_GPUS,
        conda:
            "../../envs/train.yaml"
        shell:
            "ghanet train --model {wildcards.model} --fold {params.folds} --keep-complete"
            " --genomics-dir {params.genomics_dir} {params.features}"
            " --out {params.out_dirs:q}"
            " --settings {params.settings:q} > {log} 2>&1"


if MODELS:

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
