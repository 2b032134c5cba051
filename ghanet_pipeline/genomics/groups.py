"""Gene-group definitions and their genomic columns.

A definition is either a CSV/TSV of columns of genes (the header names the groups, each
column lists its genes, ragged columns end in empty cells: MCAT's ``signatures.csv``) or a
GMT file (``name<TAB>description<TAB>gene...`` per line, e.g. MSigDB Hallmarks).

Group i's features are every table column named ``<gene><suffix>`` for a gene of group i and
a suffix in :data:`SUFFIXES`, sorted by name. A gene may sit in several groups.

Conventions (``genomics.convention``):

- ``clean`` (default) keeps every genomic column of the table.
- ``faithful`` reproduces the benchmark release (MCAT, inherited by G-HANet), which loses the
  table's last genomic column (the last ``*_rnaseq``/``*_cnv``/``*_mut`` column in table
  order; an accident of its column reordering). On TCGA-BLCA that is ``ZXDC_rnaseq``
  (Transcription Factors: 1496 -> 1495), on TCGA-UCEC ``ZNF823_cnv`` (65 -> 64).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ghanet_pipeline.io.sheet import raw_header, repeated_names

log = logging.getLogger(__name__)

SUFFIXES = ("_rnaseq", "_cnv", "_mut")
CONVENTIONS = ("clean", "faithful")


class GroupDefinitionError(ValueError):
    """The group definition file cannot be used as it is."""


@dataclass(frozen=True)
class GroupDefinition:
    """Group name -> genes, in file order."""

    names: tuple[str, ...]
    genes: tuple[tuple[str, ...], ...]
    source: str


@dataclass(frozen=True)
class Group:
    name: str
    columns: tuple[str, ...]


def is_genomic_column(name: str) -> bool:
    return any(name.endswith(s) and len(name) > len(s) for s in SUFFIXES)


def genomic_columns(columns: Sequence[str]) -> list[str]:
    """Genomic columns in table order."""
    return [c for c in columns if is_genomic_column(c)]


def _text(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise GroupDefinitionError(f"{path}: not UTF-8 text ({err}); save it as UTF-8") from err
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _unique(genes: Sequence[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for gene in genes:
        gene = str(gene).strip()
        if gene:
            seen.setdefault(gene, None)
    return tuple(seen)


def parse_gmt(text: str, source: str = "GMT") -> GroupDefinition:
    names: list[str] = []
    genes: list[tuple[str, ...]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 3 or not fields[0].strip():
            raise GroupDefinitionError(
                f"{source} line {number}: a GMT line is 'name<TAB>description<TAB>gene<TAB>gene...' "
                f"(tab-separated, at least one gene); got {line[:80]!r}"
            )
        names.append(fields[0].strip())
        genes.append(_unique(fields[2:]))
    return _definition(names, genes, source)


def parse_columns_of_genes(text: str, source: str = "signatures", sep: str = ",") -> GroupDefinition:
    try:
        table = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise GroupDefinitionError(f"{source}: not a readable table of gene columns: {err}") from err
    repeated = repeated_names(raw_header(text, sep))  # pandas would rename the second copy NAME.1
    if repeated:
        raise GroupDefinitionError(f"{source}: group name(s) defined twice: {', '.join(repeated)}; name each group once")
    names = [str(c).strip() for c in table.columns]
    genes = [_unique(table[c].tolist()) for c in table.columns]
    return _definition(names, genes, source)


def _definition(names: list[str], genes: list[tuple[str, ...]], source: str) -> GroupDefinition:
    if not names:
        raise GroupDefinitionError(f"{source}: no groups defined")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise GroupDefinitionError(f"{source}: group name(s) defined twice: {', '.join(duplicated)}")
    return GroupDefinition(tuple(names), tuple(genes), source)


def read_definition(path: str | Path) -> GroupDefinition:
    """Read a ``.gmt`` file, or a csv/tsv of columns of genes."""
    p = Path(path)
    if not p.is_file():
        raise GroupDefinitionError(f"group definition {p} not found; set 'signatures' in config.yaml")
    text = _text(p)
    if p.suffix.lower() == ".gmt":
        return parse_gmt(text, str(p))
    sep = "\t" if p.suffix.lower() in (".tsv", ".txt") else ","
    return parse_columns_of_genes(text, str(p), sep)


def modality_groups(columns: Sequence[str]) -> list[Group]:
    """Without a definition file: one group per modality present (rnaseq, cnv, mut), sorted columns."""
    groups = []
    for suffix in SUFFIXES:
        present = sorted(c for c in columns if c.endswith(suffix) and len(c) > len(suffix))
        if present:
            groups.append(Group(suffix.lstrip("_"), tuple(present)))
    return groups


def usable_columns(table_columns: Sequence[str], convention: str) -> tuple[list[str], list[str]]:
    """(genomic columns kept, columns dropped by the convention), both in table order."""
    if convention not in CONVENTIONS:
        raise GroupDefinitionError(f"convention {convention!r}: use one of {', '.join(CONVENTIONS)}")
    columns = genomic_columns(table_columns)
    if convention == "faithful" and columns:
        return columns[:-1], columns[-1:]
    return columns, []


def match_groups(definition: GroupDefinition, columns: Sequence[str]) -> tuple[list[Group], list[str]]:
    """Groups with their sorted matching columns; empty groups are left out and named in the second list."""
    available = set(columns)
    groups: list[Group] = []
    empty: list[str] = []
    for name, genes in zip(definition.names, definition.genes):
        matched = sorted({g + s for g in genes for s in SUFFIXES} & available)
        if matched:
            groups.append(Group(name, tuple(matched)))
        else:
            empty.append(name)
    return groups, empty
