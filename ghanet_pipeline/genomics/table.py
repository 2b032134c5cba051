"""Reading the MCAT-format cohort table: csv or tsv, plain or compressed, header checked."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile
from pathlib import Path

import pandas as pd

from ghanet_pipeline.genomics.problems import GenomicsError
from ghanet_pipeline.io.sheet import raw_header, repeated_names

REQUIRED_COLUMNS = ("case_id", "slide_id", "survival_months", "censorship")


def _separator(path: Path) -> str:
    name = path.name.lower()
    for ext in (".zip", ".gz", ".bz2", ".xz"):
        name = name.removesuffix(ext)
    return "\t" if name.endswith((".tsv", ".txt")) else ","


def read_cohort_table(path: str | Path) -> pd.DataFrame:
    """The cohort table as read (csv, tsv, or either zipped/gzipped; BOM and CRLF tolerated)."""
    p = Path(path)
    if not p.is_file():
        raise GenomicsError(f"cohort table {p} not found; set 'cohort_table' in config.yaml")
    return parse_cohort_text(_read_text(p), str(p), sep=_separator(p))


def _read_text(path: Path) -> str:
    """The table's text, decompressed (.zip with one member, .gz, .bz2, .xz) and decoded."""
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/") and not m.startswith("__MACOSX")]
                if len(members) != 1:
                    raise GenomicsError(f"{path}: a zipped cohort table holds exactly one file, found {len(members)}")
                raw = archive.read(members[0])
        else:
            opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)
            with opener(path, "rb") as handle:
                raw = handle.read()
        return raw.decode("utf-8-sig")
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError, UnicodeDecodeError) as err:
        raise GenomicsError(f"{path}: not a readable csv/tsv table: {err}") from err


def check_columns(table: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise GenomicsError(
            f"{source}: missing column(s) {', '.join(missing)}; an MCAT-format table has "
            f"{', '.join(REQUIRED_COLUMNS)} and <GENE>_rnaseq/_cnv/_mut columns"
        )
    duplicated = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if duplicated:
        raise GenomicsError(f"{source}: column(s) appear twice: {', '.join(duplicated)}")
    return table


def parse_cohort_text(text: str, source: str = "cohort table", sep: str = ",") -> pd.DataFrame:
    """Parse table text: the core of :func:`read_cohort_table` (and what the fuzz test drives)."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    try:
        table = pd.read_csv(io.StringIO(text), sep=sep, dtype={"case_id": str, "slide_id": str}, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise GenomicsError(f"{source}: not a readable csv/tsv table: {err}") from err
    # pandas renames a repeated NAME to NAME.1, so the check below would never see it: a gene
    # would silently drop out of its group. Look at the header as written.
    repeated = repeated_names(raw_header(text, sep))
    if repeated:
        raise GenomicsError(
            f"{source}: column(s) appear twice in the header: {', '.join(repeated)}. Each column once: "
            "delete the repeated column (or rename it if it is a different measurement)"
        )
    table.columns = [str(c).strip().replace("\r", "") for c in table.columns]
    return check_columns(table, source)
