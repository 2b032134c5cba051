# Input functions and values of the report rules (report.smk includes this file; Snakemake's
# linter wants functions and rules in separate files).

def report_inputs(wildcards):
    inputs = [t for t in all_targets() if t != str(LAYOUT.report)]
    if HAS_SLIDES and not IMPORTED:
        inputs += [str(LAYOUT.qc_png(s)) for s in SLIDES]
    return inputs
