# Stage 6: one self-contained HTML report of everything this run made.


def report_inputs(wildcards):
    inputs = [t for t in all_targets() if not t.endswith("index.html")]
    if HAS_SLIDES:
        inputs += expand(str(OUT / "qc" / "{slide}.png"), slide=SLIDES)
    return inputs


rule report:
    input:
        report_inputs,
    output:
        html=report(str(OUT / "report" / "index.html"), category="Report", caption="../report/report.rst"),
    params:
        settings=settings("report"),
        config=json.dumps(config, sort_keys=True),
    log:
        logfile("report", "report"),
    benchmark:
        benchfile("report", "report")
    localrule: True
    shell:
        "ghanet report --out-dir {OUT} --run-config {params.config:q}"
        " --settings {params.settings:q} > {log} 2>&1"
