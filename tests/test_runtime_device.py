"""The compressed runtime's kernels are CPU code: a model that lives on another device
(here PyTorch's ``meta`` device stands in for a GPU) is refused by runtime "compressed"
with one clear error and kept dense, with the reason, by runtime "auto"."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn as nn

from nnshrink.compressed import SparseTensor
from nnshrink.errors import DeviceError
from nnshrink.runtime.swap import accelerate


def _sparse_net():
    net = nn.Sequential(nn.Linear(1000, 400), nn.ReLU(), nn.Linear(400, 10))
    rng = np.random.default_rng(0)
    tensors = {}
    for key, (o, i) in (("0.weight", (400, 1000)), ("2.weight", (10, 400))):
        mask = rng.random((o, i)) < 0.05
        tensors[key] = SparseTensor((o, i), mask, rng.standard_normal(int(mask.sum())).astype(np.float32))
    return net, tensors


def test_a_model_off_cpu_is_refused_by_compressed_and_kept_dense_by_auto():
    net, tensors = _sparse_net()
    assert accelerate(net, tensors, runtime="auto").nnshrink_runtime["0"] == "sparse"  # on CPU: a kernel
    net.to("meta")
    with pytest.raises(DeviceError, match=r"runtime 'compressed': the compressed kernels run on CPU only; the "
                                          r"model is on meta \(move it to CPU, or use runtime 'auto' or 'dense'\)"):
        accelerate(net, tensors, runtime="compressed")
    auto = accelerate(net, tensors, runtime="auto")
    assert all(isinstance(m, (nn.Linear, nn.ReLU)) for m in auto)
    assert auto.nnshrink_runtime == {n: "dense (the compressed kernels run on CPU only; the model is on meta)"
                                     for n in ("0", "2")}
