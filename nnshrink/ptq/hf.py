"""Local Hugging Face model folders: load offline, calibrate on text, embed sentences.

Needs the optional ``hf`` extra (transformers). Nothing downloads: the hub is switched
off before transformers is imported. A text model's calibration file holds one text per
line; texts are batched by length (little padding) and the model's output is the
attention-masked mean of its last hidden state, i.e. the sentence embedding of
sentence-transformers models such as all-MiniLM-L6-v2.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, DataError

WEIGHT_FILE = "model.safetensors"


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ConfigError("--hf-model needs transformers: pip install 'nnshrink[hf]'") from None
    transformers.logging.set_verbosity_error()
    return transformers


def weights_path(folder: str | os.PathLike) -> Path:
    """The folder's single safetensors weight file (sharded or pickle-only folders are refused)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"--hf-model {str(folder)!r} is not a folder")
    path = folder / WEIGHT_FILE
    if not path.is_file():
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
        raise CheckpointError(f"model folder {str(folder)!r} has no {WEIGHT_FILE}"
                              + (f" (found {', '.join(found)}; only a single safetensors file is read)" if found else ""))
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"model folder {str(folder)!r} has no config.json")
    return path


def load_model(folder: str | os.PathLike):
    """(model in eval mode, tokenizer) from a local folder, offline."""
    weights_path(folder)
    tf = _transformers()
    try:
        model = tf.AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        tok = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot load the model in {str(folder)!r}: {str(exc).splitlines()[0]}") from None
    return model.eval(), tok


def read_texts(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a UTF-8 text file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read calibration texts from {str(path)!r}: {exc}") from None
    texts = [t.strip() for t in lines if t.strip()]
    if not texts:
        raise DataError(f"calibration file {str(path)!r} holds no text (one text per line)")
    return texts


def text_batches(tokenizer, texts: list[str], batch_size: int = 16, max_length: int = 128) -> list[dict]:
    """Tokenized batches of texts of similar length (sorted, so padding stays small)."""
    lengths = [len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    return [dict(tokenizer([texts[i] for i in order[s:s + batch_size]], padding=True, truncation=True,
                           max_length=max_length, return_tensors="pt"))
            for s in range(0, len(order), batch_size)]


def mean_pooled(model, batch: dict) -> torch.Tensor:
    """Attention-masked mean of the last hidden state (the un-normalised sentence embedding)."""
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def post_norm_sums(model) -> dict[str, str]:
    """{output projection: the LayerNorm reading it plus the skip connection} of BERT-family
    (post-norm) layers: ``*.output.dense`` beside ``*.output.LayerNorm``, which computes
    LayerNorm(dense(h) + residual); sequential reconstruction restores that sum (sequential.py)."""
    modules = dict(model.named_modules())
    sums = {}
    for name, module in modules.items():
        norm = name.rsplit(".", 1)[0] + ".LayerNorm"
        if name.endswith("output.dense") and isinstance(module, torch.nn.Linear) and norm in modules:
            sums[name] = norm
    return sums


@torch.no_grad()
def embed(model, batches: list[dict]) -> torch.Tensor:
    """L2-normalised sentence embeddings, batch after batch."""
    return torch.nn.functional.normalize(torch.cat([mean_pooled(model, b) for b in batches]), dim=-1)
