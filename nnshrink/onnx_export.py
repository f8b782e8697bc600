"""Export a compressed model as ONNX, decoded or in its codebook form.

Decoded: every weight is a float initializer, so any ONNX runtime runs it at once.
Codebook: each shared weight stays as it is in the archive, one uint8 index per
position plus its float codebook, joined in the graph by Cast + Gather; only the shared
weights change, so the file shrinks by about 4x on them. Pruned positions index a 0.0
centroid (the codebook's own, or one appended); when all 256 slots are taken, a bool
keep-mask and a Where restore the zeros.

How: the weight becomes a ``torch.nn.utils.parametrize`` parametrization whose forward is
``codebook[indices.long()]``, and the float copy it replaces is emptied, so
``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``: it needs no onnxscript
and runs offline) traces the Gather over a uint8 initializer. Constant folding is off,
or the exporter would fold the Gather back into a float weight.
"""

from __future__ import annotations

import copy
import io
import os
import re
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .compressed import CompressedTensor, SharedTensor
from .errors import CheckpointError, ConfigError, NNShrinkError
from .format.errors import show
from .io_utils import atomic_write_bytes, check_input_file, check_output_file

OPSET = 17  # LayerNormalization is a single op from 17 on
INPUT, OUTPUT = "input", "output"


class ExportError(NNShrinkError):
    """The model cannot be traced to ONNX (an op without an ONNX form, a bad example input)."""


class CodebookWeight(nn.Module):
    """``codebook[indices]`` as a parametrization: the weight the exporter writes as a
    uint8 initializer + Cast + Gather instead of a float tensor."""

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor, keep: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("codebook", codebook)
        self.register_buffer("indices", indices)
        self.register_buffer("keep", keep)

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        weight = self.codebook[self.indices.long()]
        return weight if self.keep is None else torch.where(self.keep, weight, torch.zeros((), dtype=weight.dtype))


def codebook_parts(t: SharedTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(float32 codebook, uint8 indices in the tensor's shape, bool keep-mask or None).

    Pruned positions take the codebook's 0.0 entry, or a 0.0 appended when the codebook
    has room; with 256 nonzero centroids they need the keep-mask instead.
    """
    codebook = np.asarray(t.codebook, np.float32)
    if t.mask is None:
        return codebook, np.asarray(t.indices, np.uint8).reshape(t.shape), None
    zeros = np.flatnonzero(codebook == 0)
    keep = None
    if len(zeros):
        zero = int(zeros[0])
    elif len(codebook) < 256:
        zero, codebook = len(codebook), np.append(codebook, np.float32(0))
    else:
        zero, keep = 0, np.asarray(t.mask, bool).copy()
    indices = np.full(t.shape, zero, np.uint8)
    indices[np.asarray(t.mask, bool)] = t.indices
    return codebook, indices, keep


def install_codebooks(model: nn.Module, tensors: dict[str, CompressedTensor]) -> list[str]:
    """Turn every SharedTensor's weight in ``model`` into a CodebookWeight; returns their names."""
    done = []
    for name, t in tensors.items():
        if not isinstance(t, SharedTensor):
            continue
        mod_name, _, p_name = name.rpartition(".")
        try:
            module = model.get_submodule(mod_name)
        except AttributeError:
            raise CheckpointError(f"shared tensor {show(name)} has no module {show(mod_name)} in the model") from None
        param = module._parameters.get(p_name)
        if param is None or tuple(param.shape) != tuple(t.shape):
            raise CheckpointError(f"shared tensor {show(name)} {tuple(t.shape)} does not fit the model's parameter")
        codebook, indices, keep = codebook_parts(t)
        parts = CodebookWeight(torch.from_numpy(codebook), torch.from_numpy(indices),
                               None if keep is None else torch.from_numpy(keep))
        parametrize.register_parametrization(module, p_name, parts, unsafe=True)
        # the float copy is never read by the forward: emptied, so the file does not carry it
        module.parametrizations[p_name].original = nn.Parameter(torch.empty(0), requires_grad=False)
        done.append(name)
    return done


def _plain_copy(model: nn.Module) -> tuple[nn.Module, dict[str, CompressedTensor]]:
    """A CPU copy of an in-process model with masks and codebooks baked in, and its encodings."""
    from .encodings import export_encodings
    from .prune.masks import remove_masks
    from .quantize.share import strip

    model = copy.deepcopy(model).cpu()
    tensors = export_encodings(model)
    return remove_masks(strip(model)), tensors


def _from_file(path: str | os.PathLike, model: nn.Module | None,
               max_elements: int | None) -> tuple[nn.Module, dict[str, CompressedTensor], dict[str, Any], int]:
    """(dense model, encodings, metadata, file bytes) of an archive or an nnshrink checkpoint."""
    from .checkpoint import check_fits, model_from_state
    from .format import DEFAULT_MAX_ELEMENTS, open_archive, read_archive
    from .loading import check_shapes, is_archive, load_into, load_model

    path = check_input_file(path, CheckpointError)
    budget = DEFAULT_MAX_ELEMENTS if max_elements is None else max_elements
    size = path.stat().st_size
    if not is_archive(path):
        if model is None:
            built, meta = load_model(path)
            return built, {}, meta, size
        from .checkpoint import load_tensors

        return load_into(model, load_tensors(path), str(path)), {}, {}, size
    with open_archive(path, max_elements=budget) as lazy:  # the header: checked before anything is decoded
        header, shapes = lazy.metadata, lazy.shapes()
    if model is not None:
        check_shapes(model, shapes, str(path))
    elif not header.get("model"):
        info = header.get("info") if isinstance(header.get("info"), dict) else {}
        held = show(info["class"]) if info.get("class") else "a model"
        raise CheckpointError(f"{path} holds {held}, which nnshrink does not build itself: pass model= (a "
                              "freshly built instance; on the command line --model-factory PKG.MOD:FN)")
    else:
        check_fits(header["model"], header.get("config") or {}, shapes, source=str(path))
    archive = read_archive(path, max_elements=budget)
    if model is None:
        model = model_from_state(header["model"], header.get("config") or {}, archive.dense_state(), source=str(path))
    else:
        load_into(model, archive.dense_state(), str(path))
    return model, archive.tensors, dict(header), size


def default_input(meta: dict[str, Any]) -> torch.Tensor | None:
    """One random input of the zoo model ``meta`` names (None for any other model)."""
    from .arch.profile import model_input_shape
    from .models import model_names

    name = meta.get("model")
    if name not in model_names():
        return None
    shape = model_input_shape(name, meta.get("config") or {})
    return torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))


def _inputs(example_input) -> tuple[torch.Tensor, ...]:
    if isinstance(example_input, torch.Tensor):
        return (example_input,)
    if isinstance(example_input, (tuple, list)) and example_input and all(
            isinstance(x, torch.Tensor) for x in example_input):
        return tuple(example_input)
    raise ConfigError(f"example_input must be a tensor or a tuple of tensors; got {type(example_input).__name__}")


def onnx_bytes(model: nn.Module, inputs: tuple[torch.Tensor, ...], opset: int = OPSET) -> bytes:
    """The ONNX file of ``model`` traced on ``inputs`` (eval mode, batch axis dynamic)."""
    names = [INPUT] if len(inputs) == 1 else [f"{INPUT}_{i}" for i in range(len(inputs))]
    buf = io.BytesIO()
    was_training, fastpath = model.training, torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
            torch.onnx.export(model, inputs, buf, dynamo=False, opset_version=opset, input_names=names,
                              output_names=[OUTPUT], do_constant_folding=False,
                              dynamic_axes={n: {0: "batch"} for n in [*names, OUTPUT]})
    except NNShrinkError:
        raise
    except Exception as exc:  # the tracer's many error types: one line naming the failure
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"torch.onnx.export failed on {type(model).__name__}: {type(exc).__name__}: {first}") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    return buf.getvalue()


_PARAMETRIZED = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.0\.(codebook|indices|keep)$")


def tidy_names(blob: bytes) -> bytes:
    """Initializer names as the user's tensor names: ``fc.parametrizations.weight.0.indices``
    becomes ``fc.weight.indices`` (and ``.codebook``, ``.keep``)."""
    import onnx

    proto = onnx.load_from_string(blob)
    graph = proto.graph
    # equal tensors are stored once; their other names are outputs of Identity nodes
    names = [i.name for i in graph.initializer] + [o for node in graph.node for o in node.output]
    renames = {n: ".".join(p for p in m.groups() if p) for n in names if (m := _PARAMETRIZED.match(n))}
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    return proto.SerializeToString()


def _other_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
    """The inputs with one more example (the first repeated), to run the dynamic batch axis."""
    if any(x.dim() == 0 for x in inputs):
        return None
    return tuple(torch.cat([x, x[:1]]) for x in inputs)


@torch.no_grad()
def check_onnxruntime(blob: bytes, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """Largest |onnxruntime - PyTorch| over the outputs, at the example's batch size and one
    more; a graph that does not run (a batch size the forward fixed) is an ExportError."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("checking with onnxruntime needs it installed: pip install 'nnshrink[onnx]'") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    worst = 0.0
    for xs in filter(None, (inputs, _other_batch(inputs))):
        ref = model(*xs)
        try:
            got = sess.run(None, {n: x.numpy() for n, x in zip(names, xs)})[0]
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"the exported graph does not run at input {tuple(xs[0].shape)} in onnxruntime "
                              f"(does the forward read the batch size as a number, e.g. len(x)?): {first}") from None
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
        worst = max(worst, float(np.abs(got - ref.numpy()).max()) if got.size else 0.0)
    return worst


def export_onnx(source: nn.Module | str | os.PathLike, out: str | os.PathLike, *, codebook: bool = False,
                example_input: torch.Tensor | tuple[torch.Tensor, ...] | None = None, model: nn.Module | None = None,
                force: bool = False, max_elements: int | None = None, opset: int = OPSET,
                check: bool = False) -> dict[str, Any]:
    """Write ``source`` (an .nsk archive, an nnshrink checkpoint, or a model in memory) to
    ``out`` as ONNX and return a report: ``onnx_bytes``, ``codebook_tensors`` (names),
    ``archive_bytes`` (the source file's size; None for a model in memory).

    ``codebook=True`` keeps each shared weight as uint8 indices + codebook (module doc).
    An archive of your own model needs ``model=`` (a freshly built instance); a zoo model
    is built from the header. ``example_input`` fixes the traced input (any batch size:
    the batch axis stays dynamic); a zoo model has a default. ``out`` is replaced only
    with ``force``, atomically.
    """
    out = check_output_file(out, force=force)
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module (a freshly built instance); got {type(model).__name__}")
    if isinstance(source, nn.Module):
        if model is not None:
            raise ConfigError("model= is for an archive of your own model; source is already a model")
        net, tensors = _plain_copy(source)
        meta, archive_bytes = {}, None
    elif isinstance(source, (str, os.PathLike)):
        net, tensors, meta, archive_bytes = _from_file(source, model, max_elements)
    else:
        raise ConfigError(f"source must be an nn.Module or a file path; got {type(source).__name__}")
    if example_input is None:
        example_input = default_input(meta)
        if example_input is None:
            raise ConfigError("example_input is needed: nnshrink does not know this model's input shape")
    inputs = _inputs(example_input)
    net = net.cpu().eval()
    shared = install_codebooks(net, tensors) if codebook else []
    inputs = tuple(x.cpu() for x in inputs)
    blob = tidy_names(onnx_bytes(net, inputs, opset))
    diff = check_onnxruntime(blob, net, inputs) if check else None
    atomic_write_bytes(out, blob)
    return {"output": str(out), "codebook": codebook, "onnx_bytes": len(blob), "archive_bytes": archive_bytes,
            "codebook_tensors": shared, "opset": opset, "max_abs_diff": diff,
            "input_shape": [list(x.shape) for x in inputs] if len(inputs) > 1 else list(inputs[0].shape)}


def check_onnx_available() -> None:
    """Refuse early, in one line, when the exporter's dependency is missing."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install 'nnshrink[onnx]'") from None


__all__ = ["export_onnx", "CodebookWeight", "codebook_parts", "install_codebooks", "ExportError"]
