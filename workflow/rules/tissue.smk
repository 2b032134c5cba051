# Stage 1: tissue segmentation and the patch grid, one job per slide.
# A slide that cannot be read still gets its outputs, marked failed (unless strict: true).


rule tissue:
    input:
        demo_outputs(),
    output:
        tiles=directory(str(LAYOUT.tiles(SLIDE))),
        png=str(LAYOUT.qc_png(SLIDE)),
        geojson=str(LAYOUT.qc_geojson(SLIDE)),
        status=str(LAYOUT.status(SLIDE)),
    params:
        out_dir=LAYOUT.root,
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
        [str(LAYOUT.status(s)) for s in SLIDES],
    output:
        str(LAYOUT.manifest),
    params:
        out_dir=LAYOUT.root,
    log:
        logfile("manifest", "manifest"),
    benchmark:
        benchfile("manifest", "manifest")
    localrule: True
    conda:
        "../../envs/slides.yaml"
    shell:
        "ghanet manifest --out-dir {params.out_dir} --output {output} > {log} 2>&1"
