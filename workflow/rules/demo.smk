# The synthetic demo cohort (config: demo.enabled). Slide ids are known before it runs
# (ghanet_pipeline.demo.cohort.plan), so `snakemake -n` shows the whole DAG.
if DEMO["enabled"]:

    rule demo_cohort:
        output:
            samples=str(DEMO_DIR / "samples.csv"),
            cohort=str(DEMO_DIR / "cohort.csv"),
            signatures=str(DEMO_DIR / "signatures.csv"),
            splits=directory(str(DEMO_DIR / "splits")),
        params:
            out_dir=lambda w, output: Path(output.samples).parent,
            patients=DEMO["patients"],
            seed=DEMO["seed"],
            folds=config["genomics"]["n_folds"],
        log:
            logfile("demo_cohort", "demo_cohort"),
        benchmark:
            benchfile("demo_cohort", "demo_cohort")
        threads: 2
        conda:
            "../../envs/slides.yaml"
        shell:
            "ghanet demo-cohort {params.out_dir} --patients {params.patients} --seed {params.seed}"
            " --folds {params.folds} --threads {threads} > {log} 2>&1"
