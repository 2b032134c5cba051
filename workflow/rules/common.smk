# Shared by all stages: the sample sheet, the cohort inputs, the output layout (io/layout.py
# spells every output path), the settings each job gets and the run's targets. A stage's own
# input functions live beside its rules, in inputs/<stage>.smk.
import json
from pathlib import Path

import pandas as pd

from ghanet_pipeline.genomics import folds
from ghanet_pipeline.io import run_folder, sheet
from ghanet_pipeline.config import section_json
from ghanet_pipeline.features.encoder_names import UnknownEncoderError, check_encoder_name
from ghanet_pipeline.model.names import SLIDE_MODELS
from ghanet_pipeline.io.layout import Layout, wildcard

OUT = Path(config["output_dir"])
LAYOUT = Layout(OUT)
SLIDE = wildcard("slide")  # path patterns: str(LAYOUT.tiles(SLIDE)) is results/tiles/{slide}.zarr
try:  # refuse / , system folders and other people's files before any job starts
    run_folder.check(OUT)
except run_folder.RunFolderError as err:
    raise WorkflowError(str(err)) from None
DEMO = config["demo"]
DEMO_DIR = Path(DEMO["dir"])


def _input_path(key, demo_name):
    """A cohort input: the config's path, or the demo's when the demo is on and it is unset."""
    if config[key]:
        return config[key]
    return str(DEMO_DIR / demo_name) if DEMO["enabled"] else None


SAMPLES_CSV = _input_path("samples", "samples.csv")
COHORT_TABLE = _input_path("cohort_table", "cohort.csv")
SIGNATURES = _input_path("signatures", "signatures.csv")
SPLITS_DIR = _input_path("splits_dir", "splits")


def _load_samples():
    if SAMPLES_CSV is None:
        return pd.DataFrame(columns=["slide_id", "case_id", "path", "mpp"])
    if DEMO["enabled"] and not config["samples"]:
        from ghanet_pipeline.demo import cohort as demo

        table = demo.plan(DEMO["patients"], DEMO["seed"], DEMO_DIR)
    else:
        try:
            table = sheet.read_samples(SAMPLES_CSV, allow_shared_files=config["allow_shared_slide_files"])
        except sheet.SampleSheetError as err:
            raise WorkflowError(str(err)) from None
    validate(table, "../schemas/samples.schema.yaml")
    return table.set_index("slide_id", drop=False)


SAMPLES = _load_samples()
SLIDES = list(SAMPLES["slide_id"])
HAS_SLIDES = len(SLIDES) > 0
HAS_GENOMICS = COHORT_TABLE is not None
ENCODER = config["features"]["encoder"]
FEATURES_DIR = LAYOUT.features_dir(ENCODER)
# Features made elsewhere (CLAM/TRIDENT .h5): `import_features` replaces tissue and features, and
# features.encoder is then only the name recorded for them.
IMPORTED = bool(config["features"]["import_dir"])
if HAS_SLIDES and not IMPORTED:  # before any job: otherwise only the first features job (after tissue) would say so
    try:
        check_encoder_name(config["features"]["encoder"])
    except UnknownEncoderError as err:
        raise WorkflowError(str(err)) from None
# jobs that read the sample sheet again (genomics, infer) accept what the config accepts
SHARED_FILES_FLAG = " --allow-shared-slide-files" if config["allow_shared_slide_files"] else ""
STRICT_FLAG = "--strict" if config["strict"] else ""

NO_SLIDES_FIX = "set 'samples' to a sample sheet (slide_id, case_id, path) to train them"


def trained_models():
    """train.models that this run can train: without slides, the slide models are skipped with one
    warning (a genomics-only table then needs no edit of train.models)."""
    if not HAS_GENOMICS:
        return []
    wanted = list(config["train"]["models"])
    skipped = [m for m in wanted if m in SLIDE_MODELS] if not HAS_SLIDES else []
    if skipped:
        logger.warning(f"No slides ('samples' is empty or unset): skipping the slide models {', '.join(skipped)} "
                       f"of train.models; {NO_SLIDES_FIX}.")
    return [m for m in wanted if m not in skipped]


MODELS = trained_models()


def n_folds():
    """Given split files decide the fold count; otherwise genomics.n_folds (the demo writes that many)."""
    if SPLITS_DIR is None or (DEMO["enabled"] and not config["splits_dir"]):
        return config["genomics"]["n_folds"]
    try:
        return len(folds.split_files(SPLITS_DIR))  # the genomics stage's own reading of the folder
    except folds.FoldError as err:
        raise WorkflowError(str(err)) from err


FOLDS = list(range(n_folds())) if HAS_GENOMICS else []


def settings(stage):
    """The stage's config section as JSON: passed to the entry point and used as params,
    so Snakemake reruns exactly the jobs whose settings changed."""
    return section_json(config, stage)


def slide_path(wildcards):
    return SAMPLES.loc[wildcards.slide, "path"]


def slide_manifest():
    """manifest.csv of the tissue stage: what genomics and infer read, unless features were imported."""
    return str(LAYOUT.manifest) if HAS_SLIDES and not IMPORTED else []


def feature_store(slide):
    """A slide's feature store (features.smk: the outputs of a shard of slides)."""
    return str(LAYOUT.features(ENCODER, slide))


def slide_mpp_arg(wildcards):
    mpp = SAMPLES.loc[wildcards.slide, "mpp"] if "mpp" in SAMPLES.columns else None
    return "" if mpp is None or pd.isna(mpp) else f"--mpp {float(mpp)}"


def demo_outputs():
    """Files the demo rule makes, so slide rules depend on it when the demo is on."""
    if DEMO["enabled"] and not config["samples"]:
        return [str(DEMO_DIR / "samples.csv")]
    return []


def logfile(stage, name=SLIDE):
    return str(LAYOUT.log(stage, name))


def benchfile(stage, name=SLIDE):
    return str(LAYOUT.benchmark(stage, name))


def all_targets():
    """What a run makes: the stages its config and inputs ask for, and always the report."""
    targets = []
    if HAS_SLIDES and not IMPORTED:
        targets.append(str(LAYOUT.manifest))
        targets += [feature_store(s) for s in SLIDES]
    if HAS_GENOMICS:
        targets.append(str(LAYOUT.genomics.summary))
        targets += [str(LAYOUT.model_summary(m)) for m in MODELS]
    if HAS_SLIDES and models_dir_for_inference() and INFER["model"] in (MODELS or [INFER["model"]]):
        targets.append(str(LAYOUT.predictions))
    targets.append(str(LAYOUT.report))
    return targets


wildcard_constraints:
    slide=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    model=r"[a-z_]+",
    fold=r"\d+",
