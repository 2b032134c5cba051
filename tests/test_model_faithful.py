"""G-HANet ``faithful`` vs ``clean``: module structure, where dropout acts, the E2 tie rule,
the round-2 key/value reuse, and faithful eval outputs against a plain re-implementation of
docs/model.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ghanet_pipeline.model import build_model, model_config
from ghanet_pipeline.model.attention import MultiHeadAttention
from ghanet_pipeline.model.dropout import FastDropout, dropout, keep_threshold
from ghanet_pipeline.model.ghanet import association_weights, topk_count
from ghanet_pipeline.model.losses import nll_survival_loss, reconstruction_loss


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ghanet(mode, dim=24, sizes=(3, 1)):
    return build_model("ghanet", model_config("ghanet", feature_dim=dim, group_sizes=list(sizes), attention_mode=mode))


def dropout_places(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Dropout)]


# --------------------------------------------------------------------------- structure

# Modules holding parameters, as checkpoints written before the faithful train-mode work store
# them (group sizes (3, 1)); both modes must keep exactly these so old checkpoints still load.
FAITHFUL_PARAMETER_MODULES = [
    "tokens", "cab_proj.0", "norm_context", "norm_q1", "cross_attn_1.to_q", "cross_attn_1.to_k",
    "cross_attn_1.to_v", "cross_attn_1.to_out", "norm_ff1", "ff1.net.0", "ff1.net.2", "norm_q2", "norm_ff2",
    "ff2.net.0", "ff2.net.2", "norm_recon", "recon_heads.0.0", "recon_heads.0.1", "recon_heads.0.4",
    "recon_heads.1.0", "recon_heads.1.1", "recon_heads.1.4", "hsb_proj.0", "hsb_proj.1", "morphology.a.0",
    "morphology.b.0", "morphology.score", "edge_mlp_1.0", "edge_mlp_1.1", "edge_mlp_2.0", "edge_mlp_2.1",
    "self_attn.to_q", "self_attn.to_k", "self_attn.to_v", "self_attn.to_out", "norm_ff3", "ff3.net.0",
    "ff3.net.2", "token_head.0", "token_head.1", "classifier",
]
CLEAN_EXTRA = ["cross_attn_2.to_q", "cross_attn_2.to_k", "cross_attn_2.to_v", "cross_attn_2.to_out"]


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_state_dict_layout_is_the_historical_one(mode):
    keys = list(ghanet(mode).state_dict())
    owners = sorted({k.rsplit(".", 1)[0] if k != "tokens" else k for k in keys})
    expected = FAITHFUL_PARAMETER_MODULES + (CLEAN_EXTRA if mode == "clean" else [])
    assert owners == sorted(expected)


def test_faithful_train_structure():
    model = ghanet("faithful").train()
    assert dropout_places(model) == [
        "cab_proj.2",
        "cross_attn_1.attn_dropout",  # on the attention probabilities
        "ff1.net.3", "ff2.net.3",
        "recon_heads.0.3", "recon_heads.1.3",
        "hsb_proj.3",
        # none in the gated-attention scorer (morphology)
        "self_attn.attn_dropout",
        "ff3.net.3", "token_head.3",
    ]
    assert model.cross_attn_2 is None
    for mha in (model.cross_attn_1, model.self_attn):
        assert [n for n, _ in mha.named_children()] == ["to_q", "to_k", "to_v", "to_out", "attn_dropout"]
        assert mha.dropout_at == "probabilities" and mha.attn_dropout.p == 0.25
    assert [type(m) for m in model.morphology.a] == [nn.Linear, nn.Tanh]
    assert [type(m) for m in model.morphology.b] == [nn.Linear, nn.Sigmoid]


def test_clean_structure_is_unchanged():
    model = ghanet("clean").train()
    assert dropout_places(model) == [
        "cab_proj.2",
        "cross_attn_1.dropout",  # after the output projection
        "ff1.net.3",
        "cross_attn_2.dropout",
        "ff2.net.3",
        "recon_heads.0.3", "recon_heads.1.3",
        "hsb_proj.3",
        "morphology.a.2", "morphology.b.2",
        "self_attn.dropout",
        "ff3.net.3", "token_head.3",
    ]
    for mha in (model.cross_attn_1, model.cross_attn_2, model.self_attn):
        assert [n for n, _ in mha.named_children()] == ["to_q", "to_k", "to_v", "to_out", "dropout"]
    assert [type(m) for m in model.morphology.a] == [nn.Linear, nn.Tanh, FastDropout]


# --------------------------------------------------------------------------- where dropout acts


@pytest.mark.parametrize("dropout_at", ["output", "probabilities"])
def test_attention_dropout_acts_where_it_says(dropout_at):
    mha = MultiHeadAttention(dim=8, heads=2, head_dim=4, dropout=0.25, dropout_at=dropout_at).train()
    x, ctx = torch.randn(3, 8), torch.randn(7, 8)
    torch.manual_seed(11)
    out, logits = mha(x, ctx)

    q = mha.to_q(x).reshape(3, 2, 4).transpose(0, 1)
    k = mha.to_k(ctx).reshape(7, 2, 4).transpose(0, 1)
    v = mha.to_v(ctx).reshape(7, 2, 4).transpose(0, 1)
    expected_logits = q @ k.transpose(-1, -2) / 2.0  # 1 / sqrt(head_dim 4)
    probabilities = expected_logits.softmax(-1)
    torch.manual_seed(11)  # the same dropout mask, drawn by hand where the mode says
    if dropout_at == "probabilities":
        probabilities = dropout(probabilities, 0.25, training=True)
    expected = mha.to_out((probabilities @ v).transpose(0, 1).reshape(3, 8))
    if dropout_at == "output":
        expected = dropout(expected, 0.25, training=True)
    assert torch.allclose(logits, expected_logits, atol=1e-6)  # logits: before softmax and dropout
    assert torch.allclose(out, expected, atol=1e-6)
    if dropout_at == "probabilities":  # nothing zeroed after the output projection
        assert (out != 0).all()
    else:
        assert (out == 0).any()


@pytest.mark.parametrize("p", [0.25, 0.1])
def test_fast_dropout_zeroes_p_scales_the_rest_and_is_seeded(p):
    layer = FastDropout(p).train()
    assert isinstance(layer, nn.Dropout) and not list(layer.state_dict())
    x = (torch.rand(400, 500) + 0.5).requires_grad_()  # no zeros of its own
    torch.manual_seed(3)
    y = layer(x)
    keep = y != 0
    assert abs(float(1 - keep.float().mean()) - p) < 0.005  # 200000 draws: std 0.001
    assert torch.allclose(y[keep], x[keep] / (1 - p), rtol=1e-6, atol=0)
    y.backward(torch.full_like(y, 2.0))
    assert torch.equal(x.grad, keep * 2.0 * torch.tensor(1 / (1 - p)))  # grad * mask * scale
    torch.manual_seed(3)
    assert torch.equal(layer(x), y)  # the same seed, the same mask
    assert not torch.equal(layer(x), y)  # the stream moves on
    torch.manual_seed(3)
    assert torch.equal(dropout(x, p, training=True), y)  # one implementation: module and function
    assert torch.equal(layer.eval()(x), x)  # eval mode: identity, as nn.Dropout


def test_fast_dropout_keep_probability_is_exact_where_it_can_be():
    assert keep_threshold(0.25) == (np.uint8, 64)  # one byte per entry
    assert keep_threshold(2**-12) == (np.uint16, 16)
    dtype, t = keep_threshold(0.1)
    assert dtype == np.uint32 and abs(t / 2**32 - 0.1) <= 2**-33
    x = torch.ones(10)
    assert torch.equal(dropout(x, 0.0), x) and torch.equal(dropout(x, 1.0), torch.zeros(10))
    assert torch.equal(dropout(x, 0.5, training=False), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_dropout_is_native_dropout_on_cuda():
    x = torch.randn(64, 32, device="cuda")
    torch.manual_seed(4)
    ours = FastDropout(0.25).train()(x)
    torch.manual_seed(4)
    assert torch.equal(ours, nn.Dropout(0.25).train()(x))


def test_faithful_gated_scorer_has_no_dropout_in_train_mode():
    faithful, clean = ghanet("faithful"), ghanet("clean")
    h = torch.randn(50, 512)
    for model, deterministic in ((faithful, True), (clean, False)):
        scorer = model.morphology.train()
        same = torch.equal(scorer(h), scorer(h))
        assert same == deterministic
        assert torch.equal(scorer(h), scorer.eval()(h)) == deterministic


# --------------------------------------------------------------------------- the tie rule


def test_tie_rule_hand_computed():
    e = math.e
    # N = 10 so k = floor(0.2 * 10) = 2.
    m = torch.tensor([
        [1.0, 3.0, 2.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # top value 3 three times
        [0.5, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # the k-th value 1 is tied
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 4.0],  # no tie at the k-th value
    ])
    assert topk_count(10) == 2
    no_tie = [0.0] * 8 + [e / (e + 1), 1 / (e + 1)]

    faithful = association_weights(m, keep_ties=True)
    expected_faithful = torch.tensor([
        [0.0, 1 / 3, 0.0, 1 / 3, 1 / 3, 0.0, 0.0, 0.0, 0.0, 0.0],  # all three tied kept
        [0.0, e / (e + 2), 1 / (e + 2), 1 / (e + 2), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # softmax([2, 1, 1])
        no_tie,
    ])
    assert torch.allclose(faithful, expected_faithful, atol=1e-7)
    assert (faithful > 0).sum(dim=1).tolist() == [3, 3, 2]

    clean = association_weights(m)  # exactly k; among ties the lower index wins
    expected_clean = torch.tensor([
        [0.0, 0.5, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # indices 1 and 3, not 4
        [0.0, e / (e + 1), 1 / (e + 1), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # index 2 beats 3
        no_tie,
    ])
    assert torch.allclose(clean, expected_clean, atol=1e-7)
    assert (clean > 0).sum(dim=1).tolist() == [2, 2, 2]


def test_clean_tie_break_by_index_is_deterministic_on_a_long_tied_row():
    m = torch.zeros(2, 1000)  # every score tied: k = 200
    m[1, 500:] = 1.0  # 500 tied at the top
    clean = association_weights(m)
    assert torch.equal(clean[0].nonzero().flatten(), torch.arange(200))
    assert torch.equal(clean[1].nonzero().flatten(), torch.arange(500, 700))
    assert torch.allclose(clean[clean > 0], torch.full((400,), 1 / 200))
    faithful = association_weights(m, keep_ties=True)
    assert torch.allclose(faithful[0], torch.full((1000,), 1 / 1000))
    assert torch.equal(faithful[1].nonzero().flatten(), torch.arange(500, 1000))


def test_blank_patches_tie_in_the_model():
    # Copies of an ordinary patch need not tie bit-exactly in a model (the q.k product rounds by
    # column position in BLAS), so ties are made exact: "blank" patches whose CAB projection is
    # zero after the ReLU have a zero LayerNorm output, zero keys and an association score of
    # exactly 0, whatever the kernel.
    n, distinct = 10, 4  # k = 2; the one real patch sits at index 4, blanks elsewhere
    assert topk_count(n) == 2
    x = torch.zeros(n, 24)
    x[distinct] = 3 * torch.randn(24)
    signs = set()
    for mode in ("faithful", "clean"):
        torch.manual_seed(1)
        model = ghanet(mode, sizes=(3, 1, 5, 2)).eval()
        with torch.no_grad():
            model.cab_proj[0].bias.fill_(-0.5)  # blank rows: Linear gives -0.5 everywhere, ReLU gives 0
            out = model(x, return_attention=True)
        m, e2 = out["association_logits"], out["association"]
        blanks = [j for j in range(n) if j != distinct]
        assert (m[:, blanks] == 0).all()
        for row in range(m.shape[0]):
            v = float(m[row, distinct])
            assert v != 0
            signs.add(v > 0)
            expected = torch.zeros(n)
            if v > 0 and mode == "faithful":  # k-th largest is 0, tied by all nine blanks: all kept
                expected[distinct] = math.exp(v) / (math.exp(v) + 9)
                expected[blanks] = 1 / (math.exp(v) + 9)
            elif v > 0:  # clean: the real patch and the lowest-index blank
                expected[distinct] = math.exp(v) / (math.exp(v) + 1)
                expected[0] = 1 / (math.exp(v) + 1)
            elif mode == "faithful":  # the top value 0 is shared by nine blanks: all kept, equal weights
                expected[blanks] = 1 / 9
            else:  # clean: blanks 0 and 1
                expected[[0, 1]] = 0.5
            assert torch.allclose(e2[row], expected, atol=1e-6), (mode, row, v)
    assert signs == {True, False}  # both cases met (fixed seed)


# --------------------------------------------------------------------------- K/V computed once


def naive_associate(model, h):
    """The release's round 2: the round-1 module called again, projecting the context again."""
    context = model.norm_context(h)
    r, _ = model.cross_attn_1(model.norm_q1(model.tokens), context)
    r = model.ff1(model.norm_ff1(r)) + r
    r, logits = model.cross_attn_1(model.norm_q2(model.tokens + r), context)
    r = model.ff2(model.norm_ff2(r)) + r
    return model.norm_recon(r), logits.mean(dim=0)


@pytest.mark.parametrize("train", [False, True])
def test_faithful_reuses_round_one_keys_and_values_bit_identically(train):
    model = ghanet("faithful", dim=32).train(train)
    h = torch.randn(57, 512)
    calls = []
    hook = model.cross_attn_1.to_k.register_forward_hook(lambda *_: calls.append(1))
    torch.manual_seed(3)
    r, m = model.associate(h)
    hook.remove()
    assert len(calls) == 1  # the context's keys are projected once per forward
    torch.manual_seed(3)
    r_naive, m_naive = naive_associate(model, h)
    assert torch.equal(r, r_naive) and torch.equal(m, m_naive)

    # gradients agree too (summed in a different order, so to rounding)
    grads = []
    for fn in (model.associate, lambda x: naive_associate(model, x)):
        model.zero_grad()
        torch.manual_seed(3)
        out_r, out_m = fn(h)
        (out_r.square().sum() + out_m.sum()).backward()
        grads.append([p.grad.clone() for p in model.cross_attn_1.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- eval outputs vs docs/model.md


def reference_faithful_eval(model, x):
    """Faithful G-HANet in eval mode written out from docs/model.md with plain tensor ops."""
    p = dict(model.named_parameters())

    def lin(t, name):
        return F.linear(t, p[name + ".weight"], p.get(name + ".bias"))

    def ln(t, name):
        return F.layer_norm(t, (t.shape[-1],), p[name + ".weight"], p[name + ".bias"])

    def mha(name, queries, ctx, heads=4, dim=128):
        def split(t):
            return t.reshape(t.shape[0], heads, dim).transpose(0, 1)
        q, k, v = split(lin(queries, name + ".to_q")), split(lin(ctx, name + ".to_k")), split(lin(ctx, name + ".to_v"))
        logits = q @ k.transpose(-1, -2) / math.sqrt(dim)
        out = (logits.softmax(-1) @ v).transpose(0, 1).reshape(queries.shape[0], heads * dim)
        return lin(out, name + ".to_out"), logits

    def ffn(name, t):
        a, b = lin(t, name + ".net.0").chunk(2, dim=-1)
        return lin(a * F.gelu(b), name + ".net.2")

    tokens = p["tokens"]
    context = ln(F.relu(lin(x, "cab_proj.0")), "norm_context")
    r, _ = mha("cross_attn_1", ln(tokens, "norm_q1"), context)
    r = ffn("ff1", ln(r, "norm_ff1")) + r
    r, logits = mha("cross_attn_1", ln(tokens + r, "norm_q2"), context)  # round 2: the same module
    r = ffn("ff2", ln(r, "norm_ff2")) + r
    r = ln(r, "norm_recon")
    recon = [
        lin(F.elu(ln(lin(r[i], f"recon_heads.{i}.0"), f"recon_heads.{i}.1")), f"recon_heads.{i}.4")
        for i in range(len(model.group_sizes))
    ]
    hb = F.relu(ln(lin(x, "hsb_proj.0"), "hsb_proj.1"))
    score = lin(torch.tanh(lin(hb, "morphology.a.0")) * torch.sigmoid(lin(hb, "morphology.b.0")), "morphology.score")
    e1 = score.squeeze(-1).softmax(0)
    m = logits.mean(0)
    k = max(1, math.floor(0.2 * x.shape[0]))
    kth = m.sort(dim=1, descending=True).values[:, k - 1 : k]
    e2 = m.masked_fill(m < kth, -math.inf).softmax(1)  # every score >= the k-th largest
    edges = ((e1 + e2) / 2) @ hb
    y = F.relu(ln(lin(edges, "edge_mlp_1.0"), "edge_mlp_1.1"))
    y = F.relu(ln(lin(y, "edge_mlp_2.0"), "edge_mlp_2.1"))
    fused = (y + edges + r) / 2
    fused = mha("self_attn", fused, fused)[0] + fused
    fused = ffn("ff3", ln(fused, "norm_ff3")) + fused
    out_logits = lin(F.relu(ln(lin(fused, "token_head.0"), "token_head.1")).flatten(), "classifier")
    hazards = torch.sigmoid(out_logits)
    s = torch.cumprod(1 - hazards, 0)
    return {"hazards": hazards, "S": s, "risk": -s.sum(), "recon": recon, "morphology": e1, "association": e2,
            "association_logits": m}


@pytest.mark.parametrize("n", [5, 37, 300])
def test_faithful_eval_matches_the_documented_model(n):
    model = ghanet("faithful", dim=40, sizes=(3, 1, 5)).eval()
    x = torch.randn(n, 40)  # distinct patches
    with torch.no_grad():
        out = model(x, return_attention=True)
        ref = reference_faithful_eval(model, x)
    for key in ("hazards", "S", "risk", "morphology", "association", "association_logits"):
        assert torch.allclose(out[key], ref[key], rtol=1e-4, atol=1e-6), key
    assert torch.equal(out["association"] > 0, ref["association"] > 0)
    for a, b in zip(out["recon"], ref["recon"]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_faithful_train_step_is_reproducible_and_uses_dropout():
    model = ghanet("faithful").train()
    x = torch.randn(30, 24)
    targets = [torch.randn(3), torch.randn(1)]

    def run(seed):
        torch.manual_seed(seed)
        out = model(x)
        return nll_survival_loss(out["hazards"], 1, 0) + 0.3 * reconstruction_loss(out["recon"], targets)

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))  # dropout is on in train mode
