# Stage 6: one self-contained HTML report of everything this run made.

include: "inputs/report.smk"


rule report:
    input:
        report_inputs,
    output:
        html=report(str(LAYOUT.report), category="Report", caption="../report/report.rst"),
    params:
        out_dir=LAYOUT.root,
        settings=settings("report"),
        config=json.dumps(config, sort_keys=True),
    log:
        logfile("report", "report"),
    benchmark:
        benchfile("report", "report")
    localrule: True
    conda:
        "../../envs/report.yaml"
    shell:
        "ghanet report --out-dir {params.out_dir} --run-config {params.config:q}"
        " --settings {params.settings:q} > {log} 2>&1"
