# Stage 3: genomic groups, survival bins, folds and fold-fitted scalers, one job per cohort.
if HAS_GENOMICS:

    rule genomics:
        input:
            demo_outputs(),
            manifest=slide_manifest(),
        output:
            summary=str(LAYOUT.genomics.summary),
            patients=str(LAYOUT.genomics.patients),
            folds=[str(LAYOUT.genomics.fold(k).targets) for k in FOLDS],
        params:
            out_dir=LAYOUT.genomics.dir,
            table=COHORT_TABLE,
            signatures=f"--signatures {SIGNATURES}" if SIGNATURES else "",
            splits=f"--splits-dir {SPLITS_DIR}" if SPLITS_DIR else "",
            samples=f"--samples {SAMPLES_CSV}" if HAS_SLIDES else "",
            manifest=f"--manifest {slide_manifest()}" if slide_manifest() else "",
            settings=settings("genomics"),
        log:
            logfile("genomics", "genomics"),
        benchmark:
            benchfile("genomics", "genomics")
        threads: 1
        resources:
            mem_mb=8000,
            runtime=30,
        localrule: True  # one small cohort-level job: not worth a queue wait
        conda:
            "../../envs/genomics.yaml"
        shell:
            "ghanet genomics --cohort-table {params.table:q} {params.signatures} {params.splits}"
            " {params.samples} {params.manifest} --out-dir {params.out_dir}"
            f" --settings {{params.settings:q}}{SHARED_FILES_FLAG} > {{log}} 2>&1"
