"""Fuzz the cohort-table reader of the genomics stage and the cleaning that follows it.

Any text either reads into a table with the required columns or raises GenomicsError (never a
pandas exception); any cell values either give finite survival labels and genomic values that
are finite or missing (never inf, never beyond HUGE), or a GenomicsError. Bounded: small
example counts, no deadline, the whole file runs in a few seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.genomics import patients as cohort_patients
from ghanet_pipeline.genomics import table as cohort_table
from ghanet_pipeline.genomics import values as genomic_values
from ghanet_pipeline.genomics.problems import GenomicsError, Problems

GENES = ["A1_rnaseq", "B2_cnv", "C3_mut"]
SETTINGS = stage_settings("genomics", None, '{"on_conflicting_duplicates": "first"}')
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text_cell = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10)
number_cell = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["", "NA", "nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e308", "=1+1", "1,5", " 3 "]),
    text_cell,
)


@FUZZ
@given(st.text(max_size=300), st.sampled_from([",", "\t"]), st.booleans(), st.booleans())
def test_any_text_reads_or_raises_genomics_error(body, sep, bom, crlf):
    header = sep.join(["case_id", "slide_id", "survival_months", "censorship", *GENES]) + "\n"
    for text in (body, header + body):
        if crlf:
            text = text.replace("\n", "\r\n")
        if bom:
            text = "\ufeff" + text
        try:
            table = cohort_table.parse_cohort_text(text, sep=sep)
        except GenomicsError:
            pass
        else:
            assert all(c in table.columns for c in cohort_table.REQUIRED_COLUMNS)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / ("cohort.tsv" if sep == "\t" else "cohort.csv")
            path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
            try:
                table = cohort_table.read_cohort_table(path)
            except GenomicsError:
                continue
            assert all(c in table.columns for c in cohort_table.REQUIRED_COLUMNS)


row = st.tuples(
    st.sampled_from(["P1", "P2", "P3", "P4", " P5 ", ""]),
    number_cell,
    st.one_of(st.sampled_from(["0", "1", "0.0", "1.0", "2", "-1", "", "yes"]), number_cell),
    number_cell,
    number_cell,
    number_cell,
)


@FUZZ
@given(st.lists(row, min_size=1, max_size=8))
def test_any_cells_clean_to_finite_labels_and_values(rows):
    table = pd.DataFrame(
        [(case, f"S{i}", t, c, *g) for i, (case, t, c, *g) in enumerate(rows)],
        columns=["case_id", "slide_id", "survival_months", "censorship", *GENES],
    )
    problems = Problems()
    try:
        patients = cohort_patients.collapse_patients(table, SETTINGS, problems)
        patients = cohort_patients.valid_survival(patients, problems)
    except GenomicsError:
        return
    assert patients.index.is_unique and (patients.index.str.strip() == patients.index).all()
    assert np.isfinite(patients.survival_months).all() and (patients.survival_months >= 0).all()
    assert set(patients.censorship) <= {0, 1}
    matrix = genomic_values.numeric_matrix(patients, GENES, problems)
    values = matrix.to_numpy()
    assert not np.isinf(values).any()
    assert (np.abs(values[~np.isnan(values)]) <= genomic_values.HUGE).all()
    # every cell that became missing without being empty is reported
    raw = patients[GENES]
    suspicious = matrix.isna().to_numpy() & raw.notna().to_numpy() & (raw.astype(str).apply(lambda c: c.str.strip()) != "").to_numpy()
    if suspicious.any():
        assert problems.lines
