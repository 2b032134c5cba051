# Stage 5: slide-only prediction (no genomics needed) and attention heatmaps.

include: "inputs/infer.smk"


rule infer:
    input:
        models=infer_model_inputs,
        manifest=slide_manifest(),
        features=[feature_store(s) for s in SLIDES],
    output:
        predictions=report(str(LAYOUT.predictions), category="Predictions", caption="../report/predictions.rst"),
        heatmaps=report(
            directory(str(LAYOUT.heatmaps_dir)),
            patterns=["{name}.png"],
            category="Heatmaps",
            caption="../report/heatmaps.rst",
        ),
    params:
        out_dir=LAYOUT.root,
        features_dir=FEATURES_DIR,
        models_dir=models_dir_for_inference(),
        samples=SAMPLES_CSV,
        settings=settings("infer"),
    log:
        logfile("infer", "infer"),
    benchmark:
        benchfile("infer", "infer")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/infer.yaml"
    shell:
        "ghanet infer --models-dir {params.models_dir:q} --samples {params.samples:q}"
        " --out-dir {params.out_dir} --features-dir {params.features_dir}"
        f" --settings {{params.settings:q}}{SHARED_FILES_FLAG} > {{log}} 2>&1"
