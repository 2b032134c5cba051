# Stage 5: slide-only prediction (no genomics needed) and attention heatmaps.

rule infer:
    input:
        models=infer_model_inputs,
        manifest=slide_manifest(),
        features=expand(str(OUT / "features" / ENCODER_DIR / "{slide}.zarr"), slide=SLIDES),
    output:
        predictions=report(str(OUT / "predictions.csv"), category="Predictions", caption="../report/predictions.rst"),
        heatmaps=report(
            directory(str(OUT / "heatmaps")),
            patterns=["{name}.png"],
            category="Heatmaps",
            caption="../report/heatmaps.rst",
        ),
    params:
        out_dir=lambda w, output: Path(output.predictions).parent,
        features_dir=lambda w, input: Path(input.features[0]).parent,
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
