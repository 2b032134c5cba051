# Stage 2: patch features with the configured encoder (GPU when present).
#
# features.slides_per_job = 1: one job per slide (rule `features`).
# features.slides_per_job = k > 1 or auto: one job per shard (rules `features_shard<i>`), one
# process, one encoder build and one CUDA context for its slides; each slide keeps its own
# store, status and failure. auto sizes shards by the slides' bytes on disk
# (features.shard_megabytes; ghanet_pipeline.features.shards.plan_shards). The stores are
# `update()` outputs: Snakemake does not delete them before a shard job runs, and the job keeps
# every store that is complete and current (ghanet_pipeline.features.extract.complete_store_reason:
# finished, same encoder settings, newer than its tiles store), so a crashed shard redoes only its
# unfinished slides, and a deleted store or a re-tiled slide (`--forcerun results/tiles/S2.zarr`)
# costs one job start plus that slide. `--forcerun` of a store (or of features_shard<i>) reruns
# the job but keeps its complete stores: to re-encode one slide, delete its store. The shard
# rules take their threads and resources from rule `features`, so the profile's
# set-threads/set-resources apply to them too.

from ghanet_pipeline.features.shards import plan_shards

SLIDES_PER_JOB = config["features"]["slides_per_job"]
# How slides are grouped into jobs changes no result: not in the settings (config.SCHEDULING_KEYS).
FEATURE_SETTINGS = settings("features")
ONE_JOB_PER_SLIDE = SLIDES_PER_JOB == 1
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
        slide=r"[A-Za-z0-9][A-Za-z0-9._-]*" if ONE_JOB_PER_SLIDE and not IMPORTED else r"(?!)",
    shell:
        "ghanet features --tiles {input.tiles} --slide-path {params.path:q} --out {output.store}"
        " --settings {params.settings:q} {params.strict} > {log} 2>&1"


if not ONE_JOB_PER_SLIDE and not IMPORTED:
    _TEMPLATE = rules.features.rule
    FEATURE_SHARDS = plan_shards(
        SLIDES,
        # the demo's slides are written by the workflow: not weighable when the first plan is made
        None if demo_outputs() else [SAMPLES.loc[s, "path"] for s in SLIDES],
        SLIDES_PER_JOB,
        config["features"]["shard_megabytes"],
        config["features"]["device"],
    )

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
                " --keep-complete --settings {params.settings:q} {params.strict} > {log} 2>&1"

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
