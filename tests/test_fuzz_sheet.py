"""Fuzz the sample-sheet parser: any text either parses into safe ids or raises SampleSheetError."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ghanet_pipeline.io.layout import SLIDE_ID_PATTERN
from ghanet_pipeline.io.sheet import SampleSheetError, parse_samples

cell = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(cell, cell, cell, cell), max_size=6))
def test_any_sheet_parses_safely_or_raises(rows):
    text = "slide_id,case_id,path,mpp\n" + "\n".join(",".join(r) for r in rows) + "\n"
    try:
        table = parse_samples(text, base_dir="/data")
    except SampleSheetError:
        return
    for slide_id in table.slide_id:
        assert SLIDE_ID_PATTERN.match(slide_id) and ".." not in slide_id and "/" not in slide_id
        # The id is a plain file name: it cannot leave its folder.
        assert (Path("/out") / f"{slide_id}.zarr").resolve().parent == Path("/out")
    assert table.slide_id.is_unique
    assert all(m is None or m != m or m > 0 for m in table.mpp)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(blob):
    try:
        parse_samples(blob.decode("utf-8", errors="replace"))
    except SampleSheetError:
        pass
