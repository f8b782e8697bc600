"""``nnshrink compress --hf-model DIR``: a local Hugging Face folder to a .nsk archive.

The archive keeps the weight file's tensor names, shapes and extra buffers, so
``nnshrink decompress`` writes a model.safetensors that loads back into the same model
(``AutoModel.from_pretrained`` on a copy of the folder). With ``calibration`` (one text
per line) the sensitivities and layer inputs come from the model run on those texts;
without, the data-free fallback runs and the report says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..checkpoint import load_tensors
from ..format import read_archive, write_archive
from ..sizes import tensor_bytes
from . import hf
from .compress import compress_model
from .module import data_free_warning, merged_rows


def compress_hf_folder(folder: str | os.PathLike, output: str | os.PathLike, *, calibration=None,
                       bits: int | None = 4, target_bpw: float | None = None, max_error: float | None = None,
                       outliers: float = 0.0,
                       sparsity: float = 0.0, force: bool = False, progress=None,
                       tune_steps: int = 0, sparsity_by_layer: bool = False, sequential: bool = False,
                       sparsity_over: str = "compensated", probe: bool = False,
                       prune_rounds: int = 1) -> dict[str, Any]:
    """Compress the folder's weights into ``output``; return the report (JSON-ready).
    ``sequential``: BERT-family output projections restore their skip sums (hf.post_norm_sums).
    ``tune_steps`` > 0, ``sparsity_by_layer``, ``sequential`` and ``probe`` need ``calibration``
    (compress.compress_model, tune.py, sparsity.py, sequential.py, probe.py)."""
    from ..errors import ConfigError
    from .tune import check_steps

    if check_steps(tune_steps, "--tune-steps") and calibration is None:
        raise ConfigError("--tune-steps needs --calibration: the tuning fits the float model's outputs on those texts")
    if sparsity_by_layer and calibration is None:
        raise ConfigError("--sparsity-by-layer needs --calibration: each layer's pruning error is measured on it")
    if sequential and calibration is None:
        raise ConfigError("--sequential needs --calibration: each layer's inputs are collected on those texts")
    if probe and calibration is None:
        raise ConfigError("--probe needs --calibration: each layer's output error is measured on those texts")
    folder, output = Path(folder), Path(output)
    file_tensors = load_tensors(hf.weights_path(folder))
    model, tok = hf.load_model(folder)
    batches = hf.text_batches(tok, hf.read_texts(calibration)) if calibration is not None else None
    result = compress_model(model, batches, forward=hf.mean_pooled, bits=bits, target_bpw=target_bpw,
                            max_error=max_error,
                            outliers=outliers, sparsity=sparsity, force=force, state=file_tensors,
                            half_small=False, progress=progress, tune_steps=tune_steps,
                            sparsity_by_layer=sparsity_by_layer, sequential=sequential, sparsity_over=sparsity_over,
                            skip_sums=hf.post_norm_sums(model) if sequential else None, probe=probe,
                            prune_rounds=prune_rounds)
    meta = result.metadata
    meta["info"].update({"source": folder.name, "hf_model": True, "nnshrink_version": __version__})
    write_archive(output, result.tensors, meta)
    size = output.stat().st_size
    numel = sum(t.numel() for t in file_tensors.values())
    original = sum(tensor_bytes(t) for t in file_tensors.values())
    warnings = list(result.warnings) + ([] if result.calibrated else [data_free_warning("--calibration")])
    return {"input": str(folder), "output": str(output), "model": None, "original_bytes": original,
            "compressed_bytes": size, "ratio": original / size, "bits_per_weight": 8 * size / numel,
            "top1_before": None, "top1_after": None, "post_training": meta["info"]["post_training"],
            "seconds": result.seconds, "warnings": warnings,
            "layers": merged_rows(read_archive(output), result.rows)}
