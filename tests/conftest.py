"""Shared test fixtures: the test slides, the repo root, and the optional real data of ../shared.

Every test runs from a fresh clone. The one real slide the suite needs is shipped in
tests/data/slides/ (CMU-1-Small-Region, CC0; provenance in the README there). The other kinds
of slide the tests need (tiny, broken, unreadable, JPEG 2000 without mpp, generic TIFF) are
written on first use into the session's temporary folder (from CMU's pixels, or drawn): see
:class:`SlideLibrary`. ../shared/data, where present, adds the real TCGA tables: tests that
need them are marked ``shared_data`` and deselected, with one line in the summary, without it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SLIDES_DIR = TESTS / "data" / "slides"
CMU_SLIDE = SLIDES_DIR / "CMU-1-Small-Region.svs"
SHARED_DATA = REPO.parent / "shared" / "data"

# As `ghanet` does (cli.main): idle OpenMP threads sleep rather than spin, so in-process
# torch in the tests does not starve the subprocesses they start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_DESELECTED = pytest.StashKey[int]()


@pytest.fixture(scope="session", autouse=True)
def private_graph_cache(tmp_path_factory) -> Path:
    """Frozen encoder graphs (features.graph_cache) in the session's folder, for every test and the
    jobs they start: the user's ~/.cache is neither read nor written."""
    root = tmp_path_factory.mktemp("ghanet-cache")
    os.environ["GHANET_CACHE_DIR"] = str(root)
    return root


# ----------------------------------------------------------------------------- ../shared/data


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shared_data: needs the real TCGA tables of ../shared/data (deselected where it is absent)"
    )


def _needs_shared_data(item: pytest.Item) -> bool:
    return item.get_closest_marker("shared_data") is not None or "shared_data" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Not skipped but deselected: on a fresh clone the skip list is then only SLURM and CUDA.
    if SHARED_DATA.is_dir():
        return
    dropped = [item for item in items if _needs_shared_data(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not _needs_shared_data(item)]
        config.stash[_DESELECTED] = len(dropped)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    count = config.stash.get(_DESELECTED, 0)
    if count:
        terminalreporter.write_line(
            f"{count} tests need ../shared/data (real TCGA tables) and were deselected: {SHARED_DATA} is absent"
        )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; tests using it are deselected where it is absent (see above)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (mark the test `shared_data`)")
    return SHARED_DATA


# ----------------------------------------------------------------------------- test slides


def _cmu_region(x: int, y: int, w: int, h: int) -> np.ndarray:
    """RGB pixels of the shipped real slide (the source of every generated slide's pixels)."""
    import openslide

    with openslide.OpenSlide(str(CMU_SLIDE)) as slide:
        rgba = np.asarray(slide.read_region((x, y), 0, (w, h)))
    return np.ascontiguousarray(rgba[..., :3])


def _write_small(path: Path, library: SlideLibrary) -> None:
    # 16 x 16 px of tissue: opens, but holds not one 256 px patch (as openslide-python's small.svs)
    from ghanet_pipeline.slides.synthetic import write_aperio_svs_from_array

    write_aperio_svs_from_array(path, _cmu_region(1200, 2100, 16, 16), mpp=0.499, tile=16, levels=1, quality=30)


def _write_unreadable(path: Path, library: SlideLibrary) -> None:
    # Opens (the TIFF directories are intact); its only JPEG tile has no header, so any pixel read fails.
    from ghanet_pipeline.slides.synthetic import corrupt_tile

    shutil.copyfile(library.small, path)
    corrupt_tile(path, index=0, mode="header")


def _write_broken(path: Path, library: SlideLibrary) -> None:
    # Cut inside the first TIFF directory: no format recognises it (OpenSlideUnsupportedFormatError),
    # as with a slide whose copy stopped early.
    import tifffile

    data = library.small.read_bytes()
    with tifffile.TiffFile(library.small) as tif:
        first = tif.pages[0]
        cut = first.offset + 2 + 12 * (len(first.tags) // 2)
    path.write_bytes(data[:cut])


def _write_unopenable(path: Path, library: SlideLibrary) -> None:
    # A well-formed tiled TIFF with a compression code no codec knows: OpenSlide refuses it on open.
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((16, 16, 3), np.uint8), photometric="rgb", tile=(16, 16), metadata=None, software=False)
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["Compression"]
        offset, byteorder = tag.valueoffset, "little" if tif.byteorder == "<" else "big"
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write((52479).to_bytes(2, byteorder))


def _write_boxes(path: Path, library: SlideLibrary) -> None:
    # A generic (non-vendor) pyramidal TIFF with deflate tiles, as openslide-python's boxes.tiff:
    # OpenSlide reads it, the JPEG tile reader must decline it. 72 dpi is a screen, not a microscope.
    import cv2
    import tifffile

    rng = np.random.default_rng(7)
    image = np.full((250, 300, 3), 255, np.uint8)
    for _ in range(12):
        x, y, w, h = rng.integers(0, 260), rng.integers(0, 210), rng.integers(10, 40), rng.integers(10, 40)
        image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    dpcm = 72 / 2.54
    with tifffile.TiffWriter(path) as tif:
        for level in range(4):
            tif.write(
                image,
                photometric="rgb",
                tile=(64, 64),
                compression="zlib",
                subfiletype=1 if level else 0,  # reduced-resolution levels, as OpenSlide's generic-tiff wants
                resolution=(dpcm, dpcm),
                resolutionunit="CENTIMETER",
                metadata=None,
                software=False,
            )
            image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)


def _write_no_mpp_jpeg2000(path: Path, library: SlideLibrary) -> None:
    """An Aperio SVS as older scanners wrote them (like TCGA-CR-7395): JPEG 2000 tiles (33005),
    two levels of exact 2x, and no resolution anywhere (no MPP, no AppMag, no TIFF resolution).

    Level 0 is the tissue side of CMU (1536 px wide, six tiles) three times over, so at
    0.25 um/px it holds a few dozen 128 um patch candidates; repeated tiles are encoded once."""
    import cv2
    import imagecodecs
    import tifffile

    strip = _cmu_region(684, 1000, 1536, 1967)
    level0 = np.ascontiguousarray(np.concatenate([strip] * 3, axis=1))
    level1 = cv2.resize(level0, (level0.shape[1] // 2, level0.shape[0] // 2), interpolation=cv2.INTER_AREA)
    tile = 256
    encoded: dict[bytes, bytes] = {}

    def tiles(image: np.ndarray):
        for y in range(0, image.shape[0], tile):
            for x in range(0, image.shape[1], tile):
                block = np.zeros((tile, tile, 3), np.uint8)
                part = image[y : y + tile, x : x + tile]
                block[: part.shape[0], : part.shape[1]] = part
                key = hashlib.sha1(block.tobytes()).digest()
                if key not in encoded:
                    encoded[key] = imagecodecs.jpeg2k_encode(block, level=40, codecformat="J2K")
                yield encoded[key]

    height, width = level0.shape[:2]
    header = f"Aperio Image Library v11.0.37\r\n{width}x{height} ({tile}x{tile})"
    levels = [
        (level0, f"{header} J2K/KDU Q=70"),
        (level1, f"{header} -> {level1.shape[1]}x{level1.shape[0]} J2K/KDU Q=70"),
    ]
    with tifffile.TiffWriter(path) as tif:
        for image, description in levels:
            # pre-encoded tiles, stored as they are under Aperio's "JPEG 2000 RGB" compression code
            tif.write(
                tiles(image),
                shape=image.shape,
                dtype=np.uint8,
                photometric="rgb",
                tile=(tile, tile),
                compression=33005,
                description=description,
                metadata=None,
                software=False,
            )


_GENERATORS: dict[str, Callable[[Path, "SlideLibrary"], None]] = {
    "small.svs": _write_small,
    "boxes.tiff": _write_boxes,
    "no-mpp-jpeg2000.svs": _write_no_mpp_jpeg2000,
    "bad/unopenable.tiff": _write_unopenable,
    "bad/unreadable.svs": _write_unreadable,
    "bad/broken.svs": _write_broken,
}


@dataclass(frozen=True)
class SlideLibrary:
    """The test slides by name: tests/data/slides/<name> where shipped, else written on first
    use under ``generated`` (one folder per test session)."""

    generated: Path

    def path(self, name: str) -> Path:
        shipped = SLIDES_DIR / name
        if shipped.is_file():
            return shipped
        if name not in _GENERATORS:
            raise KeyError(f"no test slide {name!r}: ship it in {SLIDES_DIR} or add a generator to tests/conftest.py")
        target = self.generated / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            _GENERATORS[name](partial, self)
            partial.replace(target)  # never a half-written slide under the final name
        return target

    @property
    def cmu(self) -> Path:
        """Real Aperio H&E, 2220 x 2967, 0.499 um/px, 240 px JPEG tiles (shipped)."""
        return self.path("CMU-1-Small-Region.svs")

    @property
    def small(self) -> Path:
        return self.path("small.svs")

    @property
    def boxes(self) -> Path:
        return self.path("boxes.tiff")

    @property
    def no_mpp(self) -> Path:
        """JPEG 2000 Aperio SVS without any resolution (stands in for TCGA-CR-7395)."""
        return self.path("no-mpp-jpeg2000.svs")

    @property
    def unopenable(self) -> Path:
        return self.path("bad/unopenable.tiff")

    @property
    def unreadable(self) -> Path:
        return self.path("bad/unreadable.svs")

    @property
    def broken(self) -> Path:
        return self.path("bad/broken.svs")

    @property
    def missing(self) -> Path:
        """A slide path that does not exist."""
        return self.generated / "bad" / "no-such-file.svs"


@pytest.fixture(scope="session")
def test_slides(tmp_path_factory: pytest.TempPathFactory) -> SlideLibrary:
    if not CMU_SLIDE.is_file():
        raise FileNotFoundError(f"{CMU_SLIDE} is missing: it is part of the repository (restore it with git)")
    return SlideLibrary(tmp_path_factory.mktemp("test-slides"))


# ----------------------------------------------------------------------------- repo and commands


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """Folder of the `ghanet` and `snakemake` commands of this interpreter."""
    import sys

    return Path(sys.executable).parent


@pytest.fixture()
def env_with_venv(venv_bin) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module (`pytestmark = pytest.mark.usefixtures(...)`):
    on a busy 2-core machine more threads are many times slower, and results are reproducible."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
