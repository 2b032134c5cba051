# Stage 2: patch features with the configured encoder (GPU when present).
#
# features.slides_per_job = 1: one job per slide (rule `features`).
# features.slides_per_job = k > 1: one job per shard of k slides (rules `features_shard<i>`), one
# process, one encoder build and one CUDA context for the k slides; each slide keeps its own
# store, status and failure. The stores are `update()` outputs: Snakemake does not delete them
# before a shard job runs, and the job keeps every store that is complete and current
# (ghanet_pipeline.features.extract.complete_store_reason: finished, same encoder settings, newer than
# its tiles store), so a crashed shard redoes only its unfinished slides, and a deleted store or
# a re-tiled slide (`--forcerun results/tiles/S2.zarr`) costs one job start plus that slide.
# `--forcerun` of a store (or of features_shard<i>) reruns the job but keeps its complete
# stores: to re-encode one slide, delete its store. The shard rules take their threads and
# resources from rule `features`, so the profile's set-threads/set-resources apply to them too.

SLIDES_PER_JOB = int(config["features"]["slides_per_job"])
# The shard size changes no result, so it is not part of the settings that trigger reruns.
FEATURE_SETTINGS = json.dumps(
    {k: v for k, v in config["features"].items() if k != "slides_per_job"}, sort_keys=True
)
# Counted by `snakemake --resources gpu=N` (a workstation with N GPUs: at most N GPU jobs at
# once, each claiming its own device, ghanet_pipeline.runtime.devices); nothing on a CPU-only run.
FEATURES_GPUS = 0 if config["features"]["device"] == "cpu" else 1


rule features:
    input:
        tiles=str(LAYOUT.tiles(SLIDE)),
    output:
        store=directory(str(LAYOUT.features(ENCODER, SLIDE))),
    params:
        strict=STRICT_FLAG,
        path=slide_path,
        settings=FEATURE_SETTINGS,
    log:
        logfile("features"),
    benchmark:
        benchfile("features")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=FEATURES_GPUS,
    conda:
        "../../envs/features.yaml"
    wildcard_constraints:
        # with shards, this rule is only the template of their threads and resources
        slide=r"[A-Za-z0-9][A-Za-z0-9._-]*" if SLIDES_PER_JOB == 1 and not IMPORTED else r"(?!)",
    shell:
        "ghanet features --tiles {input.tiles} --slide-path {params.path:q} --out {output.store}"
        " --settings {params.settings:q} {params.strict} > {log} 2>&1"


if SLIDES_PER_JOB > 1 and not IMPORTED:
    _TEMPLATE = rules.features.rule
    FEATURE_SHARDS = [SLIDES[i : i + SLIDES_PER_JOB] for i in range(0, len(SLIDES), SLIDES_PER_JOB)]

    for _index, _shard in enumerate(FEATURE_SHARDS):

        rule:
            name:
                f"features_shard{_index}"
            input:
                tiles=[str(LAYOUT.tiles(s)) for s in _shard],
            output:
                [update(directory(feature_store(s))) for s in _shard],
            params:
                strict=STRICT_FLAG,
                paths=[SAMPLES.loc[s, "path"] for s in _shard],
                settings=FEATURE_SETTINGS,
            log:
                logfile("features", f"shard{_index}"),
            benchmark:
                benchfile("features", f"shard{_index}")
            conda:
                "../../envs/features.yaml"
            shell:
                "ghanet features --tiles {input.tiles:q} --slide-path {params.paths:q} --out {output:q}"
                " --settings {params.settings:q} {params.strict} > {log} 2>&1"

        # threads and resources (with the profile's set-threads/set-resources of `features`)
        for _key, _value in _TEMPLATE.resources.items():
            getattr(rules, f"features_shard{_index}").rule.resources[_key] = _value


if IMPORTED:

    # Features made elsewhere: every slide's store from its .h5 (features.import_dir), one job.
    rule import_features:
        input:
            demo_outputs(),
        output:
            [directory(feature_store(s)) for s in SLIDES],
        params:
            source=config["features"]["import_dir"],
            format=config["features"]["import_format"],
            samples=SAMPLES_CSV,
            out_dir=str(FEATURES_DIR),
            encoder=config["features"]["encoder"],
            dtype=config["features"]["dtype"],
            shared=SHARED_FILES_FLAG,
        log:
            logfile("features", "import"),
        benchmark:
            benchfile("features", "import")
        threads: 1
        resources:
            mem_mb=8000,
            runtime=60,
        conda:
            "../../envs/features.yaml"
        shell:
            "ghanet import-features --dir {params.source:q} --format {params.format} --samples {params.samples:q}"
            " --out {params.out_dir:q} --encoder {params.encoder:q} --dtype {params.dtype}{params.shared}"
            " > {log} 2>&1"
