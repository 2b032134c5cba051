"""Foundation-encoder presets: full-size architectures give the stated dimensions (built on the
meta device, no memory), and the loading path works offline from a Hugging Face cache that holds a
tiny model of the same timm architecture family. Nothing is downloaded."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ghanet_pipeline.features import encoder_presets as ep
from ghanet_pipeline.features import encoders
from ghanet_pipeline.features import foundation_models as fm

REPO = Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=32, depth=1, num_heads=2)
EXPECTED = {  # what the model cards / TRIDENT state (see encoder_presets' docstring)
    "uni": (1024, 224, ep.IMAGENET_MEAN),
    "uni2-h": (1536, 224, ep.IMAGENET_MEAN),
    "conch_v1_5": (768, 448, ep.IMAGENET_MEAN),
    "virchow2": (2560, 224, ep.IMAGENET_MEAN),
    "h-optimus-0": (1536, 224, (0.707223, 0.578729, 0.703617)),
    "prov-gigapath": (1536, 224, ep.IMAGENET_MEAN),
}


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return cache


def tiny(preset: ep.Preset) -> ep.Preset:
    if preset.pooling == "attn_pool":
        preset = replace(preset, pool_dim=16)
    return ep.with_overrides(preset, **TINY)


def write_hub_snapshot(cache: Path, repo_id: str, files: dict[str, bytes | dict], revision: str = "0" * 40) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/REV/FILE}."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    snap = folder / "snapshots" / revision
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    for name, content in files.items():
        if isinstance(content, dict):  # a state dict
            if name.endswith(".safetensors"):
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in content.items()}, str(snap / name))
            else:
                torch.save(content, snap / name)
        else:
            (snap / name).write_bytes(content)
    return snap


def _reference(preset: ep.Preset, seed: int = 7) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A tiny model with weights unlike the loader's seeded init, and its checkpoint as published."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = fm.build_module(preset).eval()
        for p in module.parameters():  # LayerScale gammas start at 1e-5: make every weight matter
            p.data.normal_(0, 0.2)
    # UNI & co. publish the bare trunk; CONCH v1.5 the trunk plus its pooler.
    state = module.state_dict() if preset.pooling == "attn_pool" else module.trunk.state_dict()
    return module, {k: v.clone() for k, v in state.items()}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_full_size_architecture_gives_the_stated_dim(name):
    preset = ep.PRESETS[name]
    dim, size, mean = EXPECTED[name]
    assert (preset.dim, preset.input_size, preset.mean) == (dim, size, mean)
    with torch.device("meta"):  # the real architecture with the authors' kwargs, no memory
        module = fm.build_module(preset)
        out = module(torch.empty(2, 3, size, size))
    assert tuple(out.shape) == (2, dim) and module.num_features == dim
    assert module.trunk.embed_dim == preset.embed_dim
    if name == "virchow2":
        assert module.trunk.num_prefix_tokens == 5  # class + 4 registers: patch tokens are 5:
    spec = encoders.spec_for(name)
    assert (spec.dim, spec.input_size, spec.mean, spec.std) == (dim, size, preset.mean, preset.std)
    assert spec.fixed_input_size


@pytest.mark.parametrize("name", list(EXPECTED))
def test_tiny_model_of_the_same_family_loads_offline_from_the_hf_cache(name, hf_cache):
    preset = tiny(ep.PRESETS[name])
    reference, state = _reference(preset)
    weights_file = preset.weights_files[0]
    repo_id = preset.hub_id.lower() if name == "uni" else preset.hub_id  # timm users write MahmoodLab/uni
    config = {"architecture": preset.arch, "num_features": preset.dim, "pretrained_cfg": {"mean": preset.mean}}
    snap = write_hub_snapshot(hf_cache, repo_id, {"config.json": json.dumps(config).encode(), weights_file: state})

    enc = fm.build_preset_encoder(preset, "default", allow_download=False).to("cpu", "fp32")
    assert enc.dim == preset.dim and enc.weights.endswith(str(snap / weights_file))
    assert enc.weights_sha256 == encoders.sha256_file(snap / weights_file)
    assert (enc.spec.input_size, enc.spec.mean, enc.spec.std) == (preset.input_size, preset.mean, preset.std)
    # uint8 patches as the slide reader gives them (patch_size px), resized to the input size inside
    rng = np.random.default_rng(0)
    patches = torch.from_numpy(rng.integers(0, 256, (2, preset.patch_size, preset.patch_size, 3), dtype=np.uint8))
    out = enc(patches)
    assert out.shape == (2, preset.dim)
    with torch.inference_mode():
        expected = reference(enc.preprocess(patches).float())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)  # the cached weights, not a fresh init
    fresh = fm.build_preset_encoder(preset, "random", allow_download=False).to("cpu", "fp32")
    assert not torch.allclose(fresh(patches), out)


def test_registry_name_and_alias_reach_the_preset(hf_cache, monkeypatch):
    small = tiny(ep.PRESETS["uni2-h"])
    _, state = _reference(small)
    write_hub_snapshot(hf_cache, small.hub_id, {"model.safetensors": state})
    monkeypatch.setitem(ep.PRESETS, "uni2-h", small)  # the real name, a tiny body
    for name in ("uni2-h", "UNI_v2"):
        enc = encoders.build_encoder(name)
        assert enc.dim == small.dim and enc.spec.name == "uni2-h" and "MahmoodLab/UNI2-h" in enc.weights


def test_missing_weights_offline_say_what_to_do(hf_cache):
    with pytest.raises(encoders.WeightsUnavailableError) as info:
        encoders.build_encoder("virchow2")  # fails before building the 632 M-parameter model
    message = str(info.value)
    for part in ("paige-ai/Virchow2", str(hf_cache), "HF_TOKEN", "huggingface-cli download", "allow_download",
                 "features.weights", "gated"):  # fmt: skip
        assert part in message, part


def test_checkpoint_that_does_not_fit_names_the_file(hf_cache, tmp_path):
    preset = tiny(ep.PRESETS["h-optimus-0"])
    _, state = _reference(preset)
    state.pop("cls_token")
    path = tmp_path / "hopt.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=str(path)):
        fm.build_preset_encoder(preset, str(path), allow_download=False)
    conch = tiny(ep.PRESETS["conch_v1_5"])
    _, trunk_only = _reference(replace(conch, pooling="cls"))  # a bare ViT-L is no CONCH checkpoint
    torch.save(trunk_only, path)
    with pytest.raises(ValueError, match="attentional pooler"):
        fm.build_preset_encoder(conch, str(path), allow_download=False)


def test_position_embedding_of_another_grid_is_resampled(tmp_path):
    preset = tiny(ep.PRESETS["conch_v1_5"])
    module, state = _reference(preset)
    bigger = fm.build_module(ep.with_overrides(preset, img_size=448))  # a 28x28 grid checkpoint
    state["trunk.pos_embed"] = bigger.trunk.pos_embed.detach().clone()
    path = tmp_path / "conch.bin"
    torch.save(state, path)
    enc = fm.build_preset_encoder(preset, str(path), allow_download=False)
    assert enc.model.trunk.pos_embed.shape == module.trunk.pos_embed.shape


def test_presets_listed_without_torch_and_in_the_docs():
    import subprocess

    code = "import sys, ghanet_pipeline.features.encoder_presets as p; print(p.listing()); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip().endswith("False")  # the Snakefile can check names without loading torch
    doc = (REPO / "docs" / "byod-uni.md").read_text()
    for preset in ep.PRESETS.values():
        assert preset.name in done.stdout and f"`{preset.name}`" in doc and preset.hub_id in doc
