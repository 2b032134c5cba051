"""G-HANet and baselines: size, gradients, edge cases, losses and the c-index."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ghanet_pipeline.model import build_model, count_parameters, model_config
from ghanet_pipeline.model.ghanet import association_weights, topk_count
from ghanet_pipeline.model.losses import nll_survival_loss, reconstruction_loss
from ghanet_pipeline.survival.metrics import concordance_index

PAPER_K = [10, 30, 48, 51, 188, 37]


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: one thread is fastest
    yield
    torch.set_num_threads(before)


def ghanet(dim=24, sizes=(3, 1, 5), mode="clean"):
    return build_model("ghanet", model_config("ghanet", feature_dim=dim, group_sizes=list(sizes), attention_mode=mode))


@pytest.mark.parametrize("mode, expected", [("clean", 16_356_209), ("faithful", 15_307_121)])
def test_parameter_count_matches_the_paper_size(mode, expected):
    model = ghanet(1024, PAPER_K, mode)
    assert count_parameters(model) == expected  # 16.36 M clean / 15.31 M faithful
    assert round(expected / 1e6, 2) == {"clean": 16.36, "faithful": 15.31}[mode]
    assert (model.cross_attn_2 is None) == (mode == "faithful")


def _loss(model, x, targets, label=1, censorship=0):
    out = model(x)
    return nll_survival_loss(out["hazards"], label, censorship) + 0.3 * reconstruction_loss(out["recon"], targets)


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_one_step_lowers_the_loss_and_reaches_both_branches(mode):
    model = ghanet(mode=mode).eval()  # no dropout: the same function before and after the step
    x = torch.randn(40, 24)
    targets = [torch.randn(3), torch.randn(1), torch.randn(5)]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)  # a small plain gradient step
    before = _loss(model, x, targets)
    before.backward()

    def grad_norm(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    for name in ("cab_proj", "cross_attn_1", "ff1", "ff2", "recon_heads", "hsb_proj", "morphology", "edge_mlp_1",
                 "self_attn", "ff3", "classifier"):
        assert grad_norm(getattr(model, name)) > 0, name
    assert model.tokens.grad.abs().sum() > 0
    if mode == "clean":
        assert grad_norm(model.cross_attn_2) > 0
        for proj in ("to_q", "to_k", "to_v", "to_out"):  # every projection of both cross-attentions
            assert getattr(model.cross_attn_1, proj).weight.grad.abs().sum() > 0
            assert getattr(model.cross_attn_2, proj).weight.grad.abs().sum() > 0
    optimizer.step()
    with torch.no_grad():
        after = _loss(model, x, targets)
    assert float(after) < float(before.detach())


@pytest.mark.parametrize("n, kept", [(1, 1), (4, 1), (5, 1), (9, 1), (10, 2), (200_000, 40_000)])
def test_topk_count_is_never_zero_nor_above_n(n, kept):
    assert topk_count(n) == kept


def test_association_weights_keep_the_top_fifth_and_carry_no_gradient():
    m = torch.randn(6, 200_000, requires_grad=True)
    e2 = association_weights(m)
    assert not e2.requires_grad
    assert torch.allclose(e2.sum(dim=1), torch.ones(6))
    assert ((e2 > 0).sum(dim=1) == 40_000).all()
    top = torch.topk(m.detach(), 40_000, dim=1).indices
    assert (torch.gather(e2, 1, top) > 0).all()


@pytest.mark.parametrize("n", [1, 4])
def test_tiny_bags(n):
    model = ghanet()
    out = model(torch.randn(n, 24), return_attention=True)
    assert out["association"].shape == (3, n) and out["morphology"].shape == (n,)
    assert torch.allclose(out["association"].sum(dim=1), torch.ones(3))
    assert torch.isclose(out["morphology"].sum(), torch.tensor(1.0))
    assert out["association_logits"].shape == (3, n)
    hyper = (out["morphology"] + out["association"]) / 2
    assert torch.allclose(hyper.sum(dim=1), torch.ones(3))
    assert out["S"].shape == (4,) and torch.isclose(out["risk"], -out["S"].sum())
    assert (out["S"][1:] <= out["S"][:-1]).all()
    loss = _loss(model, torch.randn(n, 24), [torch.randn(3), torch.randn(1), torch.randn(5)])
    loss.backward()
    assert torch.isfinite(loss)


def test_family_with_one_target_gives_a_finite_loss_and_gradient():
    model = ghanet(sizes=(1, 1))
    out = model(torch.randn(7, 24))
    assert [r.shape for r in out["recon"]] == [(1,), (1,)]
    loss = reconstruction_loss(out["recon"], [torch.tensor([0.7]), torch.tensor([0.0])])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.recon_heads.parameters() if p.grad is not None)


def test_batched_single_bag_input_and_bad_inputs():
    model = ghanet().eval()
    x = torch.randn(6, 24)
    with torch.no_grad():
        assert torch.allclose(model(x)["risk"], model(x.unsqueeze(0))["risk"])
    with pytest.raises(ValueError, match="empty bag"):
        model(torch.zeros(0, 24))
    with pytest.raises(ValueError, match="at least one target"):
        ghanet(sizes=(3, 0))


def test_nll_loss_matches_the_formula_and_is_clamped():
    h = torch.tensor([0.1, 0.2, 0.3, 0.4])
    s = torch.cumprod(1 - h, 0)
    # an event in bin 2: -log S_1 - log h_2
    assert float(nll_survival_loss(h, 2, 0)) == pytest.approx(float(-torch.log(s[1]) - torch.log(h[2])), rel=1e-6)
    # an event in bin 0: -log 1 - log h_0
    assert float(nll_survival_loss(h, 0, 0)) == pytest.approx(-math.log(0.1), rel=1e-6)
    # censored in bin 3: -log S_3
    assert float(nll_survival_loss(h, 3, 1)) == pytest.approx(float(-torch.log(s[3])), rel=1e-6)
    # a zero hazard is clamped at 1e-7, not -log(0)
    assert float(nll_survival_loss(torch.zeros(4), 1, 0)) == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_reconstruction_loss():
    t = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0])]
    assert float(reconstruction_loss([x.clone() for x in t], t)) == pytest.approx(0.0, abs=1e-6)
    # opposite direction: (1 - (-1))^3 + mse
    opposite = reconstruction_loss([-t[0]], [t[0]])
    assert float(opposite) == pytest.approx(8 + float(((2 * t[0]) ** 2).mean()), rel=1e-6)


def test_baselines_and_rebuild_from_config():
    abmil = build_model("abmil", model_config("abmil", feature_dim=24))
    out = abmil(torch.randn(1, 24), return_attention=True)
    assert out["morphology"].shape == (1,) and out["association"] is None and out["S"].shape == (4,)

    config = model_config("snn", genomic_dim=50)
    snn = build_model("snn", config)
    assert any(isinstance(m, torch.nn.AlphaDropout) for m in snn.modules())
    assert any(isinstance(m, torch.nn.SELU) for m in snn.modules())
    assert snn(torch.randn(50))["hazards"].shape == (4,)
    again = build_model("snn", config)
    again.load_state_dict(snn.state_dict())

    config = model_config("ghanet_norecon", feature_dim=24, group_sizes=[2, 2], attention_mode="faithful")
    assert build_model("ghanet_norecon", config).cross_attn_2 is None


def test_cindex_agrees_with_scikit_survival_convention():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    censorship = np.array([0, 0, 1, 0])
    assert concordance_index([4, 3, 2, 1], time, censorship) == 1.0  # earlier death, higher risk
    assert concordance_index([1, 2, 3, 4], time, censorship) == 0.0
    assert concordance_index([1, 1, 1, 1], time, censorship) == 0.5  # ties count half
    assert math.isnan(concordance_index([1, 2], [1.0, 2.0], [1, 1]))  # all censored: undefined
