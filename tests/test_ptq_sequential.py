"""Sequential reconstruction towards the float outputs (nnshrink/ptq/sequential.py): the
target weight is the least-squares solution (torch.linalg.lstsq as the oracle), groups
follow the input each layer reads, and a pruned deep net lands closer to the float model's
outputs than with one pass."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nnshrink
from nnshrink import PostTraining
from nnshrink.errors import ConfigError
from nnshrink.ptq.compress import compress_model
from nnshrink.ptq.sequential import input_groups, reconstruction_target


def test_target_is_the_least_squares_map_from_compressed_inputs_to_float_outputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=g, dtype=torch.float64)
    xt = x + 0.3 * torch.randn(300, 12, generator=g, dtype=torch.float64)  # what a compressed prefix gives
    w = torch.randn(5, 12, generator=g, dtype=torch.float64)
    want = torch.linalg.lstsq(xt, x @ w.T).solution.T
    gap = xt.T @ (x @ w.T - xt @ w.T)  # X~^T (T - T~): float outputs minus the float layer's on X~
    got = reconstruction_target(w, gap, xt.T @ xt, damp=0.0)
    assert torch.allclose(got, want, atol=1e-8)
    # and the quadratic form it rests on: ||X~ v - X w||^2 = (v - w*)' H~ (v - w*) + const for any v
    v1, v2 = torch.randn(2, 5, 12, generator=g, dtype=torch.float64)
    h = xt.T @ xt

    def direct(v):
        return float(((xt @ v.T - x @ w.T) ** 2).sum())

    def form(v):
        return float(torch.einsum("oi,ij,oj->", v - got, h, v - got))

    assert direct(v1) - direct(v2) == pytest.approx(form(v1) - form(v2), rel=1e-8)
    # identical inputs give the weight back, at any damping (the ridge pulls towards W, not towards zero)
    for damp in (0.0, 0.1, 10.0):
        assert torch.allclose(reconstruction_target(w, torch.zeros(12, 5, dtype=torch.float64), x.T @ x, damp=damp),
                              w, atol=1e-8)
    # with damping: the ridge solution min ||X~ v - X w||^2 + l ||v - w||^2, as lstsq of the stacked system
    lam = 0.1 * float(torch.diag(h).mean())
    stacked = torch.linalg.lstsq(torch.cat([xt, lam ** 0.5 * torch.eye(12, dtype=torch.float64)]),
                                 torch.cat([x @ w.T, lam ** 0.5 * w.T])).solution.T
    assert torch.allclose(reconstruction_target(w, gap, h, damp=0.1), stacked, atol=1e-8)


def test_target_refuses_statistics_that_do_not_fit():
    with pytest.raises(ConfigError, match=r"gap \(6, 3\)"):
        reconstruction_target(torch.zeros(3, 5), torch.zeros(6, 3), torch.eye(5))


class Attention(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):  # (B, T, d)
        a = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 4, -1)
        return self.o(a @ self.v(x))


def test_layers_reading_one_input_form_one_group_in_forward_order():
    m = Attention()
    owners = {f"{n}.weight": n for n in ("o", "v", "k", "q")}
    groups = input_groups(m, torch.randn(2, 3, 16), lambda mod, b: mod(b), owners)
    assert [sorted(g) for g in groups] == [["k.weight", "q.weight", "v.weight"], ["o.weight"]]


class Deep(nn.Module):
    """Four Linear layers in a chain: each one's error reaches the next one's inputs."""

    def __init__(self, d=48, depth=4):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(depth))

    def forward(self, x):
        for layer in self.layers:
            x = 1.5 * F.gelu(layer(x))
        return x


def _data():
    torch.manual_seed(0)
    m = Deep().eval()
    g = torch.Generator().manual_seed(1)
    return m, [torch.randn(96, 48, generator=g) for _ in range(4)]


def _rel_error(m, res, xs):
    ref = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        want = [m(x) for x in xs]
        m.load_state_dict({n: torch.as_tensor(t.to_dense()) for n, t in res.tensors.items()})
        got = [m(x) for x in xs]
        m.load_state_dict(ref)
    return float(np.mean([float(((a - b) ** 2).sum() / (b ** 2).sum()) for a, b in zip(got, want)]))


def test_sequential_pruning_lands_closer_to_the_float_outputs():
    m, xs = _data()
    g = torch.Generator().manual_seed(2)
    held_out = [torch.randn(96, 48, generator=g) for _ in range(2)]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    one_pass = compress_model(m, xs, bits=8, sparsity=0.6, min_numel=256)
    seq = compress_model(m, xs, bits=8, sparsity=0.6, min_numel=256, sequential=True)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # the model is not changed
    assert seq.metadata["info"]["post_training"]["sequential"] is True
    for r in seq.rows:  # the same fraction is pruned
        assert r["sparsity"] == pytest.approx(0.6, abs=0.01)
    # measured: about 0.45x on the calibration inputs, 0.55x on others
    assert _rel_error(m, seq, xs) < 0.6 * _rel_error(m, one_pass, xs)
    assert _rel_error(m, seq, held_out) < 0.7 * _rel_error(m, one_pass, held_out)


def test_sequential_with_per_layer_sparsity_keeps_the_chosen_fractions():
    m, xs = _data()
    by_layer = compress_model(m, xs, bits=8, sparsity=0.5, min_numel=256, sparsity_by_layer=True)
    seq = compress_model(m, xs, bits=8, sparsity=0.5, min_numel=256, sparsity_by_layer=True, sequential=True)
    assert {r["name"]: r["sparsity"] for r in seq.rows} == pytest.approx({r["name"]: r["sparsity"] for r in by_layer.rows},
                                                                         abs=0.01)
    assert _rel_error(m, seq, xs) < _rel_error(m, by_layer, xs)


@pytest.mark.parametrize("kw, match", [
    (dict(sequential="yes"), "sequential must be true or false; got 'yes'"),
    (dict(sequential=True, target_bpw=3.0), "not a budget"),
    (dict(sequential=True, max_error=0.1), "not a budget"),
])
def test_bad_sequential_settings_fail_in_one_line(kw, match):
    m, xs = _data()
    with pytest.raises(ConfigError, match=match):
        compress_model(m, xs, bits=8, min_numel=256, **kw)


def test_sequential_needs_calibration_batches():
    m, _ = _data()
    with pytest.raises(ConfigError, match="needs calibration batches"):
        compress_model(m, None, bits=8, min_numel=256, sequential=True)


def test_the_api_takes_sequential_and_reports_it():
    m, xs = _data()
    res = nnshrink.compress(m, PostTraining(bits=8, sparsity=0.6, min_numel=256, sequential=True), calibrate=xs)
    assert res.report["recipe"]["sequential"] is True and res.report["post_training"]["sequential"] is True
    assert "sequential" in res.report["post_training"]["method"]
    with pytest.raises(ConfigError, match="sequential must be true or false; got 1"):
        PostTraining(sequential=1)
    with pytest.raises(ConfigError, match="sequential needs bits"):
        PostTraining(target_bpw=4.0, sequential=True)
    with pytest.raises(ConfigError, match="sequential needs calibration data"):
        nnshrink.compress(_data()[0], PostTraining(bits=8, min_numel=256, sequential=True))


class Lookup(nn.Module):
    """An embedding table (no calibration inputs reach it) in front of two Linear layers."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(64, 32)
        self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 8)

    def forward(self, ids):
        return self.b(F.gelu(self.a(self.emb(ids).mean(1))))


def test_sparsity_over_all_prunes_the_embeddings_too():
    torch.manual_seed(0)
    m = Lookup().eval()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randint(0, 64, (16, 6), generator=g) for _ in range(4)]
    default = compress_model(m, xs, bits=8, sparsity=0.5, min_numel=256)
    spread = compress_model(m, xs, bits=8, sparsity=0.5, min_numel=256, sparsity_over="all", sequential=True)
    frac = {r["name"]: r["sparsity"] for r in spread.rows}
    assert {r["name"]: r["sparsity"] for r in default.rows}["emb.weight"] == 0.0
    assert frac == pytest.approx({"emb.weight": 0.5, "a.weight": 0.5, "b.weight": 0.5}, abs=0.01)
    assert spread.metadata["info"]["post_training"]["sparsity_over"] == "all"
    by_layer = compress_model(m, xs, bits=8, sparsity=0.5, min_numel=256, sparsity_over="all", sparsity_by_layer=True)
    frac = {r["name"]: r["sparsity"] for r in by_layer.rows}
    kept = sum(int(t.mask.sum()) for n, t in by_layer.tensors.items() if n.endswith("weight"))
    assert kept <= 0.5 * (64 * 32 + 32 * 32 + 32 * 8) and frac["emb.weight"] > 0
    with pytest.raises(ConfigError, match="sparsity_over must be one of compensated, all; got 'most'"):
        compress_model(m, xs, bits=8, sparsity=0.5, min_numel=256, sparsity_over="most")
    with pytest.raises(ConfigError, match="sparsity_over must be one of compensated, all; got 'most'"):
        PostTraining(sparsity=0.5, sparsity_over="most")


class PostNorm(nn.Module):
    """Blocks x <- norm(x + b(gelu(a(x)))): each b's output is summed with the skip path first."""

    def __init__(self, d=48, depth=3):
        super().__init__()
        self.a = nn.ModuleList(nn.Linear(d, 2 * d) for _ in range(depth))
        self.b = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(depth))
        self.norm = nn.ModuleList(nn.LayerNorm(d) for _ in range(depth))

    def forward(self, x):
        for a, b, norm in zip(self.a, self.b, self.norm):
            x = norm(x + b(F.gelu(a(x))))
        return x


def test_restoring_the_skip_sum_repairs_what_the_skip_path_carries():
    from nnshrink.ptq.calibrate import collect
    from nnshrink.ptq.layer import LayerSetting, compress_weight
    from nnshrink.ptq.sequential import compress_sequentially

    torch.manual_seed(0)
    m = PostNorm().eval()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(96, 48, generator=g) for _ in range(4)]
    names = [n for n, p in m.named_parameters() if p.dim() == 2]
    owners = {n: n.rsplit(".", 1)[0] for n in names}
    cal = collect(m, xs, weights=owners)
    state = {n: p.detach().numpy().copy() for n, p in m.named_parameters()}

    def run(restore):
        out = compress_sequentially(
            m, xs, lambda mod, x: mod(x), {n: state[n] for n in names}, owners, {},
            lambda n, w, h: compress_weight(w, LayerSetting(8, 0.0, 0.6), cal.fisher[n].numpy(), h), restore=restore)
        with torch.no_grad():
            work = PostNorm().eval()
            work.load_state_dict({**m.state_dict(), **{n: torch.as_tensor(v[0].to_dense()) for n, v in out.items()}})
            return float(np.mean([float(((work(x) - m(x)) ** 2).sum() / (m(x) ** 2).sum()) for x in xs]))

    plain = run(None)
    summed = run({f"b.{i}": f"norm.{i}" for i in range(3)})
    assert summed < 0.8 * plain, (summed, plain)  # measured: about 0.6x


def test_compress_model_takes_skip_sums_and_refuses_bad_ones():
    torch.manual_seed(0)
    m = PostNorm().eval()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(96, 48, generator=g) for _ in range(4)]
    sums = {f"b.{i}": f"norm.{i}" for i in range(3)}
    plain = compress_model(m, xs, bits=8, sparsity=0.6, min_numel=256, sequential=True)
    summed = compress_model(m, xs, bits=8, sparsity=0.6, min_numel=256, sequential=True, skip_sums=sums)
    assert summed.metadata["info"]["post_training"]["skip_sums_restored"] == 3
    assert _rel_error(m, summed, xs) < 0.9 * _rel_error(m, plain, xs)
    with pytest.raises(ConfigError, match="needs sequential=True"):
        compress_model(m, xs, bits=8, min_numel=256, skip_sums=sums)
    with pytest.raises(ConfigError, match=r"skip-sum modules \['nowhere'\] are not in the model"):
        compress_model(m, xs, bits=8, min_numel=256, sequential=True, skip_sums={"b.0": "nowhere"})


def test_masks_in_rounds_err_less_one_pass_sequential_and_by_layer_and_are_reported():
    m, xs = _data()
    for kw in (dict(), dict(sequential=True), dict(sparsity_by_layer=True)):
        once = compress_model(m, xs, bits=8, sparsity=0.6, min_numel=256, **kw)
        rounds = compress_model(m, xs, bits=8, sparsity=0.6, min_numel=256, prune_rounds=4, **kw)
        assert _rel_error(m, rounds, xs) < _rel_error(m, once, xs), kw
        zero = sum(int((t.to_dense() == 0).sum()) for t in rounds.tensors.values() if t.to_dense().ndim == 2)
        assert zero >= 0.6 * 4 * 48 * 48 - 4, kw
        info = rounds.metadata["info"]["post_training"]
        assert info["prune_rounds"] == 4 and "4 rounds of least-squares refits" in info["method"]
    with pytest.raises(ConfigError, match="pruning rounds must be an integer >= 1; got 0"):
        compress_model(m, xs, bits=8, sparsity=0.5, min_numel=256, prune_rounds=0)
    with pytest.raises(ConfigError, match="pruning rounds must be an integer >= 1; got 2.5"):
        PostTraining(sparsity=0.5, prune_rounds=2.5)
    res = nnshrink.compress(m, PostTraining(bits=8, sparsity=0.6, min_numel=256, prune_rounds=3), calibrate=xs)
    assert res.report["post_training"]["prune_rounds"] == 3
