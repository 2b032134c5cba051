"""The frozen-encoder-graph cache (features/graph_cache.py): a later job loads the graph instead of
building and tracing the encoder, with identical features; a damaged, foreign or stale entry is
never used; an unwritable cache folder only costs the tracing."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ghanet_pipeline.features import encoders
from ghanet_pipeline.features.graph_cache import GraphCache, graph_identity

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PATCHES = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (11, 64, 64, 3), dtype=np.uint8))
SHAPE = (3, 64, 64)  # the encoder's input for these patches (efficientnet_lite0 takes any size)


def cached_encoder(cache: GraphCache, weights: str = "default"):
    return encoders.build_encoder("efficientnet_lite0", weights, lazy=True).to("cpu", "fp32", cpu_graph=True,
                                                                              graph_cache=cache)


def entry_path(cache: GraphCache, weights: str = "default"):
    enc = encoders.build_encoder("efficientnet_lite0", weights, lazy=True)
    return cache.path(graph_identity(enc.spec.name, enc.weights_sha256, SHAPE))


@pytest.fixture()
def cache(tmp_path) -> GraphCache:
    return GraphCache(tmp_path / "graphs")


def test_second_encoder_loads_the_graph_and_never_builds_the_module(cache):
    first = cached_encoder(cache)
    expected = first(PATCHES)
    assert first.graph == "frozen" and first.model is not None  # traced: the module was built
    assert entry_path(cache).is_file()

    second = cached_encoder(cache)
    got = second(PATCHES)
    assert second.graph == "frozen"
    assert second.model is None  # served by the cache: no timm model, no weights loaded
    assert torch.equal(got, expected)


def test_a_job_with_a_cached_graph_does_not_import_timm(cache, tmp_path):
    """The point of the cache: the ~2 s timm/torchvision import and the tracing are skipped."""
    cached_encoder(cache)(PATCHES)
    script = textwrap.dedent(f"""
        import sys, torch
        from ghanet_pipeline.features import encoders
        from ghanet_pipeline.features.graph_cache import GraphCache
        enc = encoders.build_encoder("efficientnet_lite0", lazy=True).to(
            "cpu", "fp32", cpu_graph=True, graph_cache=GraphCache({str(cache.root)!r}))
        enc(torch.zeros((2, 64, 64, 3), dtype=torch.uint8))
        print(enc.graph, "timm" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["frozen", "False"], out.stderr[-2000:]


def test_a_damaged_entry_is_reported_and_replaced(cache, caplog):
    expected = cached_encoder(cache)(PATCHES)
    path = entry_path(cache)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a half-written or damaged file

    with caplog.at_level(logging.WARNING):
        again = cached_encoder(cache)
        got = again(PATCHES)
    assert "ignoring" in caplog.text and str(path) in caplog.text
    assert again.model is not None and again.graph == "frozen"  # traced again
    assert torch.equal(got, expected)
    assert cached_encoder(cache)(PATCHES).equal(expected)  # the rewritten entry serves again
    assert len(list(cache.root.iterdir())) == 1  # no temporary files left behind


def test_an_entry_of_other_weights_is_never_used(cache, caplog):
    """A file under the wrong key (copied, or a digest collision) is refused by the identity it records."""
    cached_encoder(cache, "random")(PATCHES)
    expected = encoders.build_encoder("efficientnet_lite0").to("cpu", "fp32")(PATCHES)
    shutil.copy(entry_path(cache, "random"), entry_path(cache, "default"))

    with caplog.at_level(logging.WARNING):
        enc = cached_encoder(cache)
        got = enc(PATCHES)
    assert "another encoder, weights or version" in caplog.text
    assert enc.model is not None
    assert float((got - expected).abs().max()) < 1e-4 * float(expected.abs().max())


def test_an_unwritable_cache_only_costs_the_tracing(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING):
        enc = cached_encoder(GraphCache(blocker / "graphs"))
        enc(PATCHES)
    assert enc.graph == "frozen"
    assert "cannot write" in caplog.text and "GHANET_CACHE_DIR" in caplog.text


def test_weights_known_only_by_name_are_not_cached(cache):
    """No digest, not random (a hub model timm found by itself): nothing to key an entry on."""
    enc = encoders.build_encoder("efficientnet_lite0", "random")
    enc.weights = "some-hub-model"
    enc.to("cpu", "fp32", cpu_graph=True, graph_cache=cache)(PATCHES)
    assert enc.graph == "frozen"
    assert not cache.root.exists()


def test_graphs_of_large_encoders_are_not_cached(cache, monkeypatch):
    """A ViT foundation model's graph would copy its ~1 GB of weights into the cache per input shape."""
    from ghanet_pipeline.features import encoder as encoder_module

    monkeypatch.setattr(encoder_module, "MAX_CACHED_WEIGHT_BYTES", 1024)
    enc = cached_encoder(cache)
    enc(PATCHES)
    assert enc.graph == "frozen"
    assert not cache.root.exists()
