"""Typed, frozen configuration, validated once against the workflow's JSON Schema.

The schema (``schemas/config.schema.yaml``, linked from ``workflow/schemas/``) is the one
source of truth for keys and defaults. Snakemake validates ``config.yaml`` with it; the
Python entry points validate with the same file here, then freeze the result into the
dataclasses below so a stage reads ``settings.patch_size``, never ``cfg.get("patch_size", 256)``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@lru_cache(maxsize=None)
def load_schema(name: str = "config") -> dict:
    text = resources.files("ghanet_pipeline.schemas").joinpath(f"{name}.schema.yaml").read_text()
    return yaml.safe_load(text)


def _validator_filling_defaults():
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        hints = [
            f"'{key}' (did you mean '{match[0]}'?)" if (match := difflib.get_close_matches(key, allowed, 1)) else f"'{key}'"
            for key in unknown
        ]
        return f"unknown key {', '.join(hints)} in '{where}'. Allowed keys there: {', '.join(allowed)}"
    return f"'{where}': {error.message}"


def validate(raw: Mapping[str, Any], schema: str | dict = "config") -> dict:
    """Return a validated copy of ``raw`` with every default filled in."""
    schema_obj = load_schema(schema) if isinstance(schema, str) else schema
    data = copy.deepcopy(dict(raw))
    errors = sorted(_validator_filling_defaults()(schema_obj).iter_errors(data), key=str)
    if errors:
        lines = "\n  ".join(_describe(e) for e in errors)
        raise ConfigError(f"invalid configuration:\n  {lines}")
    return data


# ----------------------------------------------------------------------------- command-line overrides
# Snakemake parses `--config key=value` with int/float/bool parsers and then YAML's BaseLoader, so a
# nested value (`demo='{"enabled": false}'`), `null` and numbers inside mappings arrive as strings.
# Coercing by the schema's types before validation makes `--config` mean what a --configfile means.

NULL_WORDS = frozenset({"null", "~", "none", ""})
TRUE_WORDS = frozenset({"true", "yes", "on"})
FALSE_WORDS = frozenset({"false", "no", "off"})


def _types(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _coerce_scalar(value: str, types: list[str], where: str) -> Any:
    text = value.strip()
    if "null" in types and text.lower() in NULL_WORDS:
        return None
    if "string" in types:
        return value
    if "boolean" in types:
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
    if "integer" in types:
        try:
            return int(text)
        except ValueError:
            pass
    if "number" in types:
        try:
            return float(text)
        except ValueError:
            pass
    if "array" in types or "object" in types:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"'{where}': {value!r} is not a valid {' or '.join(types)} ({err})") from err
    raise ConfigError(f"'{where}': {value!r} is not of type {' or '.join(types)}")


def coerce(value: Any, schema: Mapping[str, Any], where: str = "") -> Any:
    """``value`` with strings turned into the types ``schema`` asks for (null, booleans, integers,
    numbers, lists, nested sections); values already of a right type are returned unchanged.
    A string that fits none of the types is a ConfigError naming the key and the expected type."""
    if "anyOf" in schema and "type" not in schema:
        return _coerce_any_of(value, schema["anyOf"], where)
    types = _types(schema)
    if isinstance(value, str) and types and "string" not in types:
        value = _coerce_scalar(value, types, where or "(top level)")
    elif isinstance(value, str) and "null" in types and value.strip().lower() in NULL_WORDS:
        value = None
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and types == ["string"]:
        value = str(value)  # `--config output_dir=2024` arrives as an int
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        return {k: coerce(v, props[k], f"{where}.{k}" if where else k) if k in props else v for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [coerce(v, schema["items"], f"{where}.{i}") for i, v in enumerate(value)]
    return value


def _coerce_any_of(value: Any, alternatives: list[Mapping[str, Any]], where: str) -> Any:
    """The first alternative ``value`` fits (``slides_per_job: 7`` or ``auto``): a constant it equals
    as given, else a typed one it converts to; else unchanged, for validation to report."""
    if any("const" in alt and alt["const"] == value for alt in alternatives):
        return value
    for alt in alternatives:
        if "type" in alt:
            try:
                return coerce(value, alt, where)
            except ConfigError:
                continue
    return value


def coerce_overrides(raw: Mapping[str, Any]) -> dict:
    """The whole config coerced to the config schema's types (what the Snakefile validates)."""
    return coerce(copy.deepcopy(dict(raw)), load_schema("config"))


def read_yaml(path: str | Path) -> dict:
    """Safe YAML only: tags such as !!python/object are refused."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML (only plain YAML is accepted): {err}") from err
    except RecursionError as err:
        raise ConfigError(f"{path}: YAML nested too deeply; not a config file") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    try:
        too_big = _expanded_size(data) > MAX_YAML_NODES  # aliases of aliases ("billion laughs")
    except RecursionError:
        too_big = True
    if too_big:
        raise ConfigError(f"{path}: more than {MAX_YAML_NODES} values once YAML aliases are expanded; not a config file")
    return data


MAX_YAML_NODES = 100_000


def _expanded_size(node: Any, memo: dict[int, int] | None = None) -> int:
    """Values in ``node`` counting every alias use (memoised, so fast even when that is huge)."""
    memo = {} if memo is None else memo
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a self-referencing alias counts once
    if isinstance(node, dict):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.items())
    elif isinstance(node, list):
        size = 1 + sum(_expanded_size(v, memo) for v in node)
    else:
        size = 1
    memo[id(node)] = size
    return size


# ----------------------------------------------------------------------------- sections
# Field names equal schema keys (a test checks they stay in step); no defaults here.


@dataclass(frozen=True)
class DemoSettings:
    enabled: bool
    patients: int
    seed: int
    dir: str


@dataclass(frozen=True)
class TissueSettings:
    target_mpp: float
    patch_size: int
    overlap: float
    max_patches_per_slide: int
    min_tissue_fraction: float
    mpp_tolerance: float
    default_slide_mpp: float | None
    seg_mpp: float
    saturation_threshold: int | None
    median_blur_um: float
    close_um: float
    min_tissue_area_um2: float
    min_hole_area_um2: float
    remove_pen: bool
    remove_debris: bool
    edge_patches: bool
    max_artifact_fraction: float | None
    fill_min_new_tissue: float | None
    fill_max_overlap: float
    quality_mpp: float | None
    max_blur: float | None


@dataclass(frozen=True)
class FeatureSettings:
    encoder: str
    weights: str
    allow_download: bool
    batch_size: int
    num_workers: int
    dtype: str
    device: str
    precision: str
    cpu_graph: bool
    skip_bad_patches: bool
    import_dir: str | None
    import_format: str
    slides_per_job: int | str  # k, or "auto" (features.shards)
    shard_megabytes: int | None


@dataclass(frozen=True)
class GenomicsSettings:
    convention: str
    n_bins: int
    n_folds: int
    fold_seed: int
    ttest_alpha: float
    max_missing_fraction: float
    on_conflicting_duplicates: str


@dataclass(frozen=True)
class TrainSettings:
    models: tuple[str, ...]
    epochs: int
    lr: float
    weight_decay: float
    grad_accum: int
    recon_weight: float
    attention_mode: str
    max_patches: int | None
    seed: int
    device: str
    precision: str
    cache_gb: float | None
    one_job_per: str = "fold"  # how Snakemake groups folds into jobs; changes no result


@dataclass(frozen=True)
class InferSettings:
    models_dir: str | None
    model: str
    fold: int | None
    top_k: int
    checkpoint: str
    device: str


@dataclass(frozen=True)
class ReportSettings:
    max_heatmaps: int
    max_qc_thumbnails: int


SECTIONS: dict[str, type] = {
    "demo": DemoSettings,
    "tissue": TissueSettings,
    "features": FeatureSettings,
    "genomics": GenomicsSettings,
    "train": TrainSettings,
    "infer": InferSettings,
    "report": ReportSettings,
}


@dataclass(frozen=True)
class Config:
    output_dir: str
    samples: str | None
    cohort_table: str | None
    signatures: str | None
    splits_dir: str | None
    strict: bool
    allow_shared_slide_files: bool
    demo: DemoSettings
    tissue: TissueSettings
    features: FeatureSettings
    genomics: GenomicsSettings
    train: TrainSettings
    infer: InferSettings
    report: ReportSettings

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _section(name: str, values: Mapping[str, Any]):
    cls = SECTIONS[name]
    return cls(**{f.name: _freeze(values[f.name]) for f in dataclasses.fields(cls)})


def build(raw: Mapping[str, Any]) -> Config:
    """Validate a whole config mapping and freeze it."""
    data = validate(raw)
    top = {k: v for k, v in data.items() if k not in SECTIONS}
    return Config(**top, **{name: _section(name, data[name]) for name in SECTIONS})


def load(path: str | Path) -> Config:
    """Read, validate and freeze ``config.yaml``."""
    try:
        return build(read_yaml(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def section_from_json(name: str, text: str):
    """Validate one stage's section, passed by a rule as JSON (``--settings``)."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--settings for '{name}' is not valid JSON: {err}") from err
    sub_schema = load_schema("config")["properties"][name]
    return _section(name, validate(values, sub_schema))


# Keys that only decide how work is grouped into jobs and change no result: left out of a rule's
# settings JSON (its params), so changing them is not a reason to rerun, and out of fingerprints.
SCHEDULING_KEYS: dict[str, tuple[str, ...]] = {
    "features": ("slides_per_job", "shard_megabytes"),
    "train": ("one_job_per",),
}


def section_json(config: Mapping[str, Any], name: str) -> str:
    """The JSON a rule passes to its entry point; also its ``params:`` (reruns on change).
    The section's scheduling keys (``SCHEDULING_KEYS``) are left out."""
    skipped = SCHEDULING_KEYS.get(name, ())
    return json.dumps({k: v for k, v in config[name].items() if k not in skipped}, sort_keys=True)


def stage_settings(name: str, config_path: str | None, settings_json: str | None):
    """Settings for one stage from ``--settings JSON`` (rules) or ``--config FILE`` (by hand)."""
    if settings_json:
        return section_from_json(name, settings_json)
    if config_path:
        return getattr(load(config_path), name)
    return _section(name, validate({}, load_schema("config")["properties"][name]))
