"""nnshrink: make trained PyTorch networks small and fast.

    result = nnshrink.compress(model, "deep-compression", fine_tune=fn, evaluate=fn)
    result.save("m.nsk"); model = nnshrink.load("m.nsk", model=MyNet())
    result = nnshrink.compress(model, nnshrink.PostTraining(target_bpw=3.5), calibrate=batches)  # no training loop
    tensors = nnshrink.export(model); blob = nnshrink.serialize(tensors, metadata)
    with nnshrink.open_archive("m.nsk") as a: a.keys(), a.get(name)
    nnshrink.export_onnx("m.nsk", "m.onnx", codebook=True, model=MyNet())   # ONNX, shared weights as uint8 + codebook

The names below load on first use, so ``import nnshrink`` (and the CLI) stays fast.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "compress": "api", "export": "api", "Result": "api", "PostTraining": "ptq.module",
    "load": "loading", "export_onnx": "onnx_export",
    "Recipe": "recipes", "load_recipe": "recipes",
    "serialize": "format", "write_archive": "format", "open_archive": "format", "read_archive": "format",
    "NNShrinkError": "errors", "ConfigError": "errors", "CheckpointError": "errors", "StageError": "errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_PUBLIC))
