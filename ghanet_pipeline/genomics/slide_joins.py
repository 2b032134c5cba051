"""Which slides of the sample sheet each patient can use (the manifest drops failed ones)."""

from __future__ import annotations

import pandas as pd

from ghanet_pipeline.genomics.problems import Problems


def usable_slides(
    patients: pd.DataFrame,
    all_cases: set[str],
    sheet: pd.DataFrame | None,
    manifest: pd.DataFrame | None,
    problems: Problems,
) -> dict[str, list[str]]:
    """Case id -> usable slide ids (see module doc); every gap is reported."""
    if sheet is None:
        if manifest is not None:
            problems.note("a manifest without a sample sheet is ignored (slides come from the table)")
        return {c: list(s) for c, s in patients["table_slide_ids"].items()}
    usable: dict[str, list[str]] = {c: [] for c in patients.index}
    for slide_id, case_id in zip(sheet.slide_id, sheet.case_id):
        if manifest is not None:
            if slide_id not in manifest.index:
                problems.add("not_in_manifest", f"slide {slide_id}: in the sample sheet but not in the manifest; not used")
                continue
            status = manifest.at[slide_id, "status"]
            if status != "ok":
                reason = manifest.at[slide_id, "reason"]
                problems.add("failed_slide", f"slide {slide_id} (case {case_id}): status {status!r} in the manifest ({reason}); not used")
                continue
        if case_id in usable:
            usable[case_id].append(slide_id)
        elif case_id in all_cases:
            problems.add("slide_no_label", f"slide {slide_id}: its case {case_id} was left out (no usable survival); slide not used")
        else:
            problems.add("slide_no_genomics", f"slide {slide_id}: its case {case_id} has no row in the cohort table; slide not used")
    _report_case_mismatch(patients, sheet, problems)
    for case_id, slides in usable.items():
        if not slides:
            listed = ", ".join(patients.at[case_id, "table_slide_ids"]) or "none"
            problems.add(
                "no_slide",
                f"patient {case_id}: genomics but no usable slide (table slides: {listed}); kept for "
                "genomics-only models, skipped by slide models",
            )
    return usable


def _report_case_mismatch(patients: pd.DataFrame, sheet: pd.DataFrame, problems: Problems) -> None:
    sheet_case = dict(zip(sheet.slide_id, sheet.case_id))
    for case_id, slides in patients["table_slide_ids"].items():
        for slide_id in slides:
            other = sheet_case.get(slide_id)
            if other is not None and other != case_id:
                problems.add(
                    "case_mismatch",
                    f"slide {slide_id}: case {case_id} in the cohort table but {other} in the sample sheet; "
                    "the sample sheet's case is used",
                )
