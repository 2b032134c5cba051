# Stage 5: slide-only prediction (no genomics needed) and attention heatmaps.
INFER = config["infer"]


def infer_model_inputs(wildcards):
    if INFER["models_dir"]:
        return []  # an earlier run's models: not made by this workflow
    return [str(OUT / "models" / INFER["model"] / "summary.json")]


rule infer:
    input:
        models=infer_model_inputs,
        manifest=str(OUT / "manifest.csv"),
        features=expand(str(OUT / "features" / ENCODER_DIR / "{slide}.zarr"), slide=SLIDES),
    output:
        predictions=str(OUT / "predictions.csv"),
        heatmaps=directory(str(OUT / "heatmaps")),
    params:
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
    shell:
        "ghanet infer --models-dir {params.models_dir:q} --samples {params.samples:q}"
        " --out-dir {OUT} --features-dir {OUT}/features/{ENCODER_DIR}"
        " --settings {params.settings:q} > {log} 2>&1"
