"""Pruned weights stay zero, and shared tensors stay shared, through the USER'S optimizer
loop with nothing to call: momentum whose buffers predate pruning, AdamW, weight decay,
gradient clipping, AMP GradScaler. Every tensor kind is covered (Conv, Linear, Embedding,
MultiheadAttention in_proj_weight)."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nnshrink.prune import current_masks, prune_model
from nnshrink.quantize.share import share_weights, shared_params


class Net(nn.Module):
    """Tokens -> embedding -> self-attention -> conv + BatchNorm -> linear head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8 * 6, 4)

    def forward(self, tokens):
        h = self.emb(tokens)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = F.relu(self.bn(self.conv(h.transpose(1, 2))))
        return self.fc(h.flatten(1))


def make(seed=0):
    torch.manual_seed(seed)
    return Net()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 16, (32, 6), generator=g), torch.randint(0, 4, (32,), generator=g)


def steps(model, opt, n, *, clip=None, scaler=None):
    x, y = batch()
    for _ in range(n):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=scaler is not None):
            loss = F.cross_entropy(model(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if clip is not None:
            clip(model)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()


def assert_dead(model, masks):
    state = model.state_dict()
    assert set(masks) >= {"emb.weight", "attn.in_proj_weight", "conv.weight", "fc.weight"}
    for name, mask in masks.items():
        assert torch.all(state[name][~mask] == 0), name


def prune_mid_training(opt_factory, **kw):
    """Train dense (optimizer state builds up), prune, train on: pruned weights stay 0."""
    model = make()
    opt = opt_factory(model.parameters())
    steps(model, opt, 5, **kw)
    prune_model(model, 0.6)
    masks = current_masks(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps(model, opt, 15, **kw)
    assert_dead(model, masks)
    assert not torch.equal(model.fc.weight, before["fc.weight"])  # it did train
    return model, masks


def sgd_momentum(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def test_sgd_momentum_from_before_pruning():
    prune_mid_training(sgd_momentum)


def test_adamw():
    prune_mid_training(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1))


def test_weight_decay_on_a_copy_of_the_pruned_model():
    model = make()
    prune_model(model, 0.6)
    masks = current_masks(model)
    work = copy.deepcopy(model)  # e.g. the user keeps the best model and trains a copy
    steps(work, torch.optim.SGD(work.parameters(), lr=0.1, weight_decay=0.05), 10)
    assert_dead(work, masks)


def test_gradient_clipping_sees_only_live_gradients():
    norms = []

    def clip(model):
        norms.append(nn.utils.clip_grad_norm_(model.parameters(), 0.05))
        masks = current_masks(model) if "emb.weight" in current_masks(model) else {}
        for name, mask in masks.items():  # pruned positions carry no gradient into the norm
            p = dict(model.named_parameters())[name]
            assert torch.all(p.grad[~mask] == 0), name

    prune_mid_training(sgd_momentum, clip=clip)
    assert len(norms) == 20


def test_amp_grad_scaler_bfloat16_autocast():
    scaler = torch.amp.GradScaler("cpu")
    prune_mid_training(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), scaler=scaler)


@pytest.mark.parametrize("case", ["sgd_momentum", "adamw", "weight_decay", "clip", "amp"])
def test_shared_stays_shared(case):
    """Pruned + shared: every optimizer (over ALL parameters, frozen float copies too)
    trains only the codebooks; values stay on the codebook and pruned ones stay 0."""
    model = make()
    prune_model(model, 0.5)
    masks = current_masks(model)
    share_weights(model, 3)
    assert shared_params(model.attn) == ("in_proj_weight",) and shared_params(model.emb) == ("weight",)
    frozen = model.attn._parameters["in_proj_weight"].detach().clone()
    cb = model.attn.in_proj_weight_codebook.detach().clone()
    params = model.parameters()
    opt = {"sgd_momentum": lambda: torch.optim.SGD(params, lr=1e-3, momentum=0.9),
           "adamw": lambda: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.5),
           "weight_decay": lambda: torch.optim.SGD(params, lr=1e-3, weight_decay=0.5),
           "clip": lambda: torch.optim.SGD(params, lr=1e-3, momentum=0.9),
           "amp": lambda: torch.optim.SGD(params, lr=1e-3, momentum=0.9)}[case]()
    kw = {"clip": lambda m: nn.utils.clip_grad_norm_(m.parameters(), 0.05)} if case == "clip" else {}
    if case == "amp":
        kw["scaler"] = torch.amp.GradScaler("cpu")
    steps(model, opt, 10, **kw)
    assert not torch.equal(model.attn.in_proj_weight_codebook, cb)  # the codebook trained
    assert torch.equal(model.attn._parameters["in_proj_weight"], model.attn.in_proj_weight)
    assert not torch.equal(model.attn._parameters["in_proj_weight"], frozen)  # the copy follows it
    assert_dead(model, masks)
    state = model.state_dict()
    for name in ("emb.weight", "attn.in_proj_weight", "conv.weight", "fc.weight"):
        assert len(torch.unique(state[name])) <= 2 ** 3 + 1, name  # centroids + the pruned 0.0
