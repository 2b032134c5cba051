# Stage 2: patch features with the configured encoder, one job per slide (GPU when present).


rule features:
    input:
        tiles=str(OUT / "tiles" / "{slide}.zarr"),
    output:
        store=directory(str(OUT / "features" / ENCODER_DIR / "{slide}.zarr")),
    params:
        strict=STRICT_FLAG,
        path=slide_path,
        settings=settings("features"),
    log:
        logfile("features"),
    benchmark:
        benchfile("features")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/features.yaml"
    shell:
        "ghanet features --tiles {input.tiles} --slide-path {params.path:q} --out {output.store}"
        " --settings {params.settings:q} {params.strict} > {log} 2>&1"
