# Stage 1: tissue segmentation and the patch grid, one job per slide.
# A slide that cannot be read still gets its outputs, marked failed (unless strict: true).


rule tissue:
    input:
        demo_outputs(),
    output:
        tiles=directory(str(OUT / "tiles" / "{slide}.zarr")),
        png=str(OUT / "qc" / "{slide}.png"),
        geojson=str(OUT / "qc" / "{slide}.geojson"),
        status=str(OUT / "status" / "{slide}.json"),
    params:
        out_dir=lambda w, output: Path(output.status).parent.parent,
        strict=STRICT_FLAG,
        path=slide_path,
        mpp=slide_mpp_arg,
        settings=settings("tissue"),
    log:
        logfile("tissue"),
    benchmark:
        benchfile("tissue")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/slides.yaml"
    shell:
        "ghanet tissue --slide-id {wildcards.slide} --slide-path {params.path:q} {params.mpp}"
        " --out-dir {params.out_dir} --settings {params.settings:q} {params.strict} > {log} 2>&1"


rule manifest:
    input:
        expand(str(OUT / "status" / "{slide}.json"), slide=SLIDES),
    output:
        str(OUT / "manifest.csv"),
    params:
        out_dir=lambda w, output: Path(output[0]).parent,
    log:
        logfile("manifest", "manifest"),
    benchmark:
        benchfile("manifest", "manifest")
    localrule: True
    conda:
        "../../envs/slides.yaml"
    shell:
        "ghanet manifest --out-dir {params.out_dir} --output {output} > {log} 2>&1"
