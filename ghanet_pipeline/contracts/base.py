"""The base of every stage record: versioned, frozen, written and read in one place."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

R = TypeVar("R", bound="Record")

VERSION_KEY = "record_version"


class ContractError(ValueError):
    """A record on disk lacks what its reader needs, or was written by a newer version."""


@dataclasses.dataclass(frozen=True)
class Record:
    """Subclasses are frozen dataclasses; ``VERSION`` goes up when a field changes meaning.

    Fields without a default are required when reading; fields with one may be absent (records
    written before the field existed read with the default). Keys the reader does not know are
    ignored, so an older reader can read what a newer writer added.
    """

    VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "record"

    def to_attrs(self) -> dict[str, Any]:
        attrs = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        attrs[VERSION_KEY] = self.VERSION
        return attrs

    @classmethod
    def from_attrs(cls: type[R], attrs: Mapping[str, Any], *, source: str | Path = "") -> R:
        where = f" in {source}" if source else ""
        version = attrs.get(VERSION_KEY, 1)
        if not isinstance(version, int) or version > cls.VERSION:
            raise ContractError(
                f"{cls.KIND} record{where} has {VERSION_KEY} {version!r}, newer than this ghanet-pipeline "
                f"reads ({cls.VERSION}): upgrade ghanet-pipeline or rerun the stage that wrote it"
            )
        names = {f.name: f for f in dataclasses.fields(cls)}
        required = [n for n, f in names.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in attrs]
        if missing:
            raise ContractError(
                f"{cls.KIND} record{where} lacks {', '.join(missing)}: it was not written by this pipeline's "
                "stage or was cut short; rerun the stage that writes it"
            )
        return cls(**{n: _tupled(attrs[n]) for n in names if n in attrs})

    def replace(self: R, **changes: Any) -> R:
        return dataclasses.replace(self, **changes)


def field_names(record: type[Record]) -> list[str]:
    return [f.name for f in dataclasses.fields(record)]


def read_json_record(cls: type[R], path: str | Path) -> R:
    """A record stored as a JSON file (status records, results, summaries)."""
    path = Path(path)
    try:
        attrs = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ContractError(f"cannot read {cls.KIND} record {path}: {err}; rerun the stage that writes it") from err
    if not isinstance(attrs, dict):
        raise ContractError(f"{cls.KIND} record {path} is not a JSON object; rerun the stage that writes it")
    return cls.from_attrs(attrs, source=path)


def _plain(value: Any) -> Any:
    """Tuples become lists (JSON and zarr attrs); nested records become dicts."""
    if isinstance(value, Record):
        return value.to_attrs()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _tupled(value: Any) -> Any:
    """Lists read back as tuples, so a record read is as immutable as one built."""
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value
