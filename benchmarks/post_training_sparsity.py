"""50% unstructured sparsity on all-MiniLM-L6-v2 without retraining (issue 14).

    python benchmarks/post_training_sparsity.py --json benchmarks/results/post_training_sparsity.json \
        --section benchmarks/sections/27-post-training-sparsity.md

One torch thread; the model, calibration texts (352 lines of benchmarks/data/calibration.txt)
and the 64 measured sentences are post_training.py's. The measured sentences are never used
for calibration, tuning or any choice. Every row is written as a .nsk archive, read back,
decoded into the model and scored: ratio from the file's bytes, mean and min cosine of the
sentence embeddings against the float model's, the zero fraction of all weights and of the
Linear weights (counted in the decoded tensors). Grid step 0.125 x RMS throughout (the
earlier sparsity rows' setting). Parts (``--parts``; others are kept from an existing
``--json`` file):

- ``linear``: 50% of the Linear weights (embeddings dense): one pass (SparseGPT against the
  float model's inputs) against ``sequential`` (each layer group reconstructs the float
  outputs from the compressed prefix's inputs, nnshrink/ptq/sequential.py), plain and with
  the post-norm skip sums restored (``skip_sums``), with one fraction everywhere and with
  per-layer fractions (``sparsity_by_layer``, probed).
- ``all``: 50% of ALL weights: per-layer fractions chosen over every compressed tensor
  (``sparsity_over="all"``: embeddings pruned by Fisher x w^2, their error the Fisher
  estimate) one pass and sequential; fixed embeddings / Linear splits 60/40 .. 80/20; and
  the split of least error on the calibration texts with its Linear fraction spread over
  the layers by the allocator.
- ``tune``: norms and biases tuned on the calibration texts (``tune_steps``) on top of the
  per-layer Linear row and of the ALL-weights row of least calibration error.
- ``everyday``: the best settings above again, calibrated (and tuned) on
  benchmarks/data/calibration_everyday.txt, 827 everyday sentences written for calibration
  (section 25: calibrating on the kind of text measured); every row of this part is also
  scored on the 62 fresh sentences of benchmarks/data/sentences_fresh.txt.
- ``lookup``: embeddings / Linear splits again on the everyday calibration, the embeddings
  pruned as compress_model now prunes a lookup table: SparseGPT with the output-gradient
  matrix of its lookups (calibrate.py ``lookup``), rows weighed by their Fisher sums.
- ``rounds``: the compensated 70 / 30 split with every mask chosen in 5 rounds of
  least-squares refits (``prune_rounds``, nnshrink/ptq/refit.py), on the everyday calibration
  and on it plus benchmarks/data/calibration_everyday_more.txt (2,940 more everyday sentences
  written for calibration), there also SparseGPT's one pass, the Linear 30% spread per layer,
  and 50% of the Linear weights alone.
- ``distill``: RETRAINING on the calibration texts, so NOT "without retraining": the kept
  Linear weights (masks fixed) and the norms and biases moved by Adam towards the float
  model's embeddings, on top of the best ``all`` row; measured for comparison only.
"""

from __future__ import annotations

import argparse
import copy
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
from benchmarks.post_training import (CALIBRATION, CALIBRATION_EVERYDAY, CALIBRATION_MORE, Bench,  # noqa: E402
                                      minilm_folder)

COMMAND = ("python benchmarks/post_training_sparsity.py --json benchmarks/results/post_training_sparsity.json "
           "--section benchmarks/sections/27-post-training-sparsity.md")
STEP = 0.125
TUNE_STEPS = 300
DISTILL_STEPS = 300
DISTILL_LR = 1e-4
# embeddings / Linear fractions with at least 50% of all weights zero (embeddings 52% of them)
SPLITS = ((0.7, 0.3), (0.6, 0.4), (0.65, 0.35), (0.75, 0.25), (0.8, 0.2))
LOOKUP_SPLITS = ((0.7, 0.3), (0.75, 0.25), (0.8, 0.2))
PARTS = ("linear", "all", "tune", "distill", "everyday", "lookup", "rounds")
ROUNDS = 5


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="comma-separated parts to run; others are kept from an existing --json file")
    ap.add_argument("--section", default=None, help="write the markdown section here")
    ap.add_argument("--render", action="store_true", help="only rewrite --section from --json (no measuring)")
    args = ap.parse_args(argv)
    if args.render:
        if not args.section:
            ap.error("--render needs --section")
        Path(args.section).write_text(section(json.loads(Path(args.json).read_text())))
        return 0
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        ap.error(f"unknown parts {sorted(parts - set(PARTS))}; known: {', '.join(PARTS)}")
    out: dict = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    measure(out, parts, args.json)
    if args.section:
        Path(args.section).write_text(section(out))
    return 0


def measure(out: dict, parts: set, json_path: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from nnshrink.compressed import DenseTensor
    from nnshrink.format import read_archive, write_archive
    from nnshrink.ptq.compress import _compressible, _owner_map, compress_model
    from nnshrink.ptq.layer import LayerSetting, compress_weight, row_sensitivity
    from nnshrink.ptq.sequential import compress_sequentially
    from nnshrink.ptq.tune import tune_exact_parameters

    b = Bench(minilm_folder())
    ft = b.file_tensors
    batches, cal, seconds = b.calibrate()
    names = _compressible(ft, 1024)
    linear = [n for n in names if n in cal.hessian]
    lookups = [n for n in names if n not in cal.hessian]
    out.update({"command": COMMAND, "machine": machine(), "step": STEP, "tune_steps": TUNE_STEPS,
                "calibration_seconds": seconds, "calibration_texts": len(b.hf.read_texts(CALIBRATION)),
                "numel": b.numel, "linear_numel": sum(ft[n].numel() for n in linear),
                "note": "shared 2-core machine, loaded by other work: seconds are wall-clock on a busy machine"})
    tmp = Path(tempfile.mkdtemp())

    def save():
        Path(json_path).write_text(json.dumps(out, indent=2) + "\n")

    def row(label, tensors, meta, seconds, **extra):
        path = tmp / "row.nsk"
        size = write_archive(path, tensors, meta)
        dense = {k: torch.from_numpy(v) for k, v in read_archive(path).dense_arrays().items()}
        mean, low = b.score(dense)
        zero_lin = sum(int((dense[n] == 0).sum()) for n in linear)
        zero_all = sum(int((v == 0).sum()) for n, v in dense.items() if n in names)
        r = {"experiment": label, "bytes": size, "ratio": b.float_bytes / size, "bpw": 8 * size / b.numel,
             "mean_cos": mean, "min_cos": low, "seconds": seconds, "zero_all": zero_all / b.numel,
             "zero_linear": zero_lin / out["linear_numel"], **extra}
        print(f"{label:<80} {r['ratio']:6.2f}x cos {mean:.4f} (min {low:.4f}) zero {r['zero_all']:.3f} / "
              f"{r['zero_linear']:.3f} {seconds:5.0f} s", flush=True)
        return r

    def compress(**kw):
        t = time.perf_counter()
        res = compress_model(b.model, batches, calibration=cal, state=ft, forward=b.hf.mean_pooled, step=STEP, **kw)
        return res, time.perf_counter() - t

    def per_layer(res):
        return {r["name"]: round(r["sparsity"], 3) for r in res.rows}

    sums = b.hf.post_norm_sums(b.model)
    seq_label = "sequential, skip sums restored"

    def split(emb_frac, lin_frac, sequential, by_layer=False, tables="fisher", rounds=1):
        """Embeddings pruned at one fraction; the Linear weights at another, the same everywhere
        or (``by_layer``) in per-layer fractions of that overall fraction (probed). ``tables``
        "fisher": the embeddings by Fisher x w^2 alone (the earlier rows); "lookup": as
        compress_model prunes them now, SparseGPT with their lookups' output-gradient matrix.
        ``rounds`` > 1: every calibrated mask chosen in that many rounds of refits (refit.py)."""
        t = time.perf_counter()
        # the Linear fractions (one-pass errors, as compress_model chooses them) and the exact tensors; with
        # ``sequential`` the Linear weights are redone below, in rounds where asked
        res, _ = compress(sparsity=lin_frac, sparsity_by_layer=by_layer, probe=by_layer,
                          prune_rounds=1 if sequential else rounds)
        fractions = {r["name"]: r["sparsity"] for r in res.rows}
        chosen = {n: round(fractions[n], 4) for n in linear}
        compensated = tables == "lookup"
        emb = {n: compress_weight(ft[n].float().numpy(), LayerSetting(8, 0.0, emb_frac, STEP, rounds),
                                  cal.fisher[n].numpy(),
                                  cal.lookup[n] if compensated else None, damp=0.1,
                                  row_scale=row_sensitivity(cal.fisher[n].numpy()) if compensated else None)[0]
               for n in lookups}
        tensors = {**res.tensors, **emb}
        if sequential:  # the Linear weights again, from the inputs the pruned embeddings and prefix give
            redone = compress_sequentially(
                b.model, batches, b.hf.mean_pooled, {n: ft[n].float().numpy() for n in linear},
                _owner_map(b.model, linear), {n: t.to_dense() for n, t in emb.items()},
                lambda n, w, h: compress_weight(w, LayerSetting(8, 0.0, chosen[n], STEP, rounds),
                                                cal.fisher[n].numpy(), h, damp=0.1), damp=0.1, restore=sums)
            tensors.update({n: v[0] for n, v in redone.items()})
        return tensors, res.metadata, time.perf_counter() - t, {**chosen, **{n: emb_frac for n in lookups}}

    def calibration_error(tensors):
        """Mean relative squared error of the embeddings on the calibration texts (for choices)."""
        decoded = {n: torch.from_numpy(tensors[n].to_dense()) for n in names}
        state = {k: decoded.get(k, v).to(v.dtype) for k, v in b.original.items()}
        work = copy.deepcopy(b.model)
        work.load_state_dict(state)
        with torch.no_grad():
            errs = [float(((b.hf.mean_pooled(work, x) - b.hf.mean_pooled(b.model, x)) ** 2).sum()
                          / (b.hf.mean_pooled(b.model, x) ** 2).sum()) for x in batches]
        return float(np.mean(errs))

    def tuned(tensors, meta):
        t = time.perf_counter()
        decoded = {n: tensors[n].to_dense() for n in names}
        values, stats = tune_exact_parameters(b.model, decoded, [n for n in ft if n not in names], batches,
                                              b.hf.mean_pooled, steps=TUNE_STEPS)
        new = {**tensors, **{n: DenseTensor(v.astype(np.float32)) for n, v in values.items()}}
        return new, time.perf_counter() - t, stats

    keep = {}  # (tensors, metadata, seconds) of the rows later parts build on
    if parts & {"linear", "tune"}:
        rows = []
        if "linear" in parts:
            res, dt = compress(sparsity=0.5)
            rows.append(row("50% of every Linear weight, one pass", res.tensors, res.metadata, dt))
            res, dt = compress(sparsity=0.5, sequential=True)
            rows.append(row("50% of every Linear weight, sequential", res.tensors, res.metadata, dt))
            res, dt = compress(sparsity=0.5, sequential=True, skip_sums=sums)
            rows.append(row(f"50% of every Linear weight, {seq_label}", res.tensors, res.metadata, dt))
            res, dt = compress(sparsity=0.5, sparsity_by_layer=True, probe=True)
            rows.append(row("50% of the Linear weights, per-layer fractions (probed), one pass", res.tensors,
                            res.metadata, dt, per_layer=per_layer(res)))
        res, dt = compress(sparsity=0.5, sparsity_by_layer=True, probe=True, sequential=True, skip_sums=sums)
        rows.append(row(f"50% of the Linear weights, per-layer fractions (probed), {seq_label}", res.tensors,
                        res.metadata, dt, per_layer=per_layer(res)))
        keep["linear_by_layer"] = (res.tensors, res.metadata, dt)
        if "linear" in parts:
            out["linear"] = rows
            save()

    if parts & {"all", "tune", "distill"}:
        rows = []
        if "all" in parts:
            res, dt = compress(sparsity=0.5, sparsity_by_layer=True, probe=True, sparsity_over="all")
            rows.append(row("50% of ALL weights, per-layer fractions (probed), one pass", res.tensors, res.metadata,
                            dt, per_layer=per_layer(res)))
        res, dt = compress(sparsity=0.5, sparsity_by_layer=True, probe=True, sparsity_over="all", sequential=True,
                           skip_sums=sums)
        rows.append(row(f"50% of ALL weights, per-layer fractions (probed), {seq_label}", res.tensors, res.metadata,
                        dt, per_layer=per_layer(res)))
        keep["all_by_layer"] = (res.tensors, res.metadata, dt)
        if "all" in parts:
            tensors, meta, dt, _ = split(*SPLITS[0], False)
            rows.append(row(f"ALL weights: embeddings {SPLITS[0][0]:.0%}, every Linear {SPLITS[0][1]:.0%}, one pass",
                            tensors, meta, dt))
        for e, lf in SPLITS:
            tensors, meta, dt, _ = split(e, lf, True)
            rows.append(row(f"ALL weights: embeddings {e:.0%}, every Linear {lf:.0%}, {seq_label}", tensors, meta,
                            dt))
            keep[f"split_{e}"] = (tensors, meta, dt)
        # the split of least error on the calibration texts, its Linear fraction spread over the layers
        errors = {k: calibration_error(v[0]) for k, v in keep.items() if k.startswith("split_")}
        out["split_calibration_errors"] = errors
        e, lf = next((e, lf) for e, lf in SPLITS if f"split_{e}" == min(errors, key=errors.get))
        tensors, meta, dt, fractions = split(e, lf, True, by_layer=True)
        label = f"ALL weights: embeddings {e:.0%}, Linear {lf:.0%} overall in per-layer fractions (probed), {seq_label}"
        rows.append(row(label, tensors, meta, dt, per_layer=fractions))
        keep["split_by_layer"] = (tensors, meta, dt)
        KEEP_LABELS["split_by_layer"] = label.replace("ALL weights: ", "")
        if "all" in parts:
            out["all"] = rows
            save()

    if "tune" in parts:
        rows = []
        # which ALL-weights row to tune: least error on the calibration texts (never the measured sentences)
        errors = {k: calibration_error(v[0]) for k, v in keep.items() if k != "linear_uniform"}
        out["calibration_errors"] = errors
        best_all = min((k for k in errors if k != "linear_by_layer"), key=errors.get)
        for key, label in (("linear_by_layer", f"50% of the Linear weights, per-layer fractions (probed), {seq_label}"),
                           (best_all, "50% of ALL weights, " + KEEP_LABELS[best_all])):
            tensors, meta, dt = keep[key]
            new, dt2, stats = tuned(tensors, meta)
            rows.append(row(label + f", norms and biases tuned ({TUNE_STEPS} steps)", new, meta, dt + dt2,
                            tuning=stats))
        out["tune"] = rows
        save()

    if "distill" in parts:  # RETRAINING on the calibration texts: for comparison, not "without retraining"
        errors = out.get("calibration_errors") or {k: calibration_error(v[0]) for k, v in keep.items()
                                                    if k != "linear_uniform"}
        best_all = min((k for k in errors if k in keep and k not in ("linear_by_layer", "linear_uniform")),
                       key=errors.get)
        tensors, meta, dt = keep[best_all]
        t = time.perf_counter()
        new, stats = distill(b, tensors, names, linear, batches, ft)
        out["distill"] = [row(f"RETRAINED (not post-training): 50% of ALL weights, {KEEP_LABELS[best_all]}, kept "
                              f"Linear weights, norms and biases distilled on the calibration texts ({DISTILL_STEPS} "
                              f"Adam steps, masks fixed), re-rounded to the grid", new, meta,
                              dt + time.perf_counter() - t, distill=stats)]
        save()

    if "everyday" in parts:  # last: from here on every helper above calibrates on the everyday texts
        batches, cal, out["everyday_calibration_seconds"] = b.calibrate(CALIBRATION_EVERYDAY)
        on = f"; calibrated on {CALIBRATION_EVERYDAY.name}"
        rows = []

        def scored(r, tensors):  # the same row, also scored on the fresh sentences
            dense = {n: torch.from_numpy(tensors[n].to_dense()) for n in tensors}
            r["fresh_mean_cos"], r["fresh_min_cos"] = b.score(dense, fresh=True)
            return r

        res, dt = compress(sparsity=0.5, sparsity_by_layer=True, probe=True, sequential=True, skip_sums=sums)
        label = f"50% of the Linear weights, per-layer fractions (probed), {seq_label}{on}"
        rows.append(scored(row(label, res.tensors, res.metadata, dt, per_layer=per_layer(res)), res.tensors))
        new, dt2, stats = tuned(res.tensors, res.metadata)
        rows.append(scored(row(label + f", norms and biases tuned ({TUNE_STEPS} steps)", new, res.metadata, dt + dt2,
                               tuning=stats), new))
        save()
        res, dt = compress(sparsity=0.5, sparsity_by_layer=True, probe=True, sparsity_over="all", sequential=True,
                           skip_sums=sums)
        rows.append(scored(row(f"50% of ALL weights, per-layer fractions (probed), {seq_label}{on}", res.tensors,
                               res.metadata, dt, per_layer=per_layer(res)), res.tensors))
        save()
        for e, lf in SPLITS[:3]:
            tensors, meta, dt, _ = split(e, lf, True)
            rows.append(scored(row(f"ALL weights: embeddings {e:.0%}, every Linear {lf:.0%}, {seq_label}{on}", tensors,
                                   meta, dt), tensors))
            out["everyday"] = rows
            save()
        out["everyday"] = rows
        save()

    if "lookup" in parts:  # the embeddings compensated (calibrate.py ``lookup``), everyday calibration
        if "everyday" not in parts:
            batches, cal, out["everyday_calibration_seconds"] = b.calibrate(CALIBRATION_EVERYDAY)
        on = f"; calibrated on {CALIBRATION_EVERYDAY.name}; embeddings compensated"
        rows = []
        e0, lf0 = LOOKUP_SPLITS[0]
        for e, lf, by_layer in [(e, lf, False) for e, lf in LOOKUP_SPLITS] + [(e0, lf0, True)]:
            tensors, meta, dt, chosen = split(e, lf, True, by_layer=by_layer, tables="lookup")
            linear_part = f"Linear {lf:.0%} overall in per-layer fractions (probed)" if by_layer else \
                f"every Linear {lf:.0%}"
            r = row(f"ALL weights: embeddings {e:.0%}, {linear_part}, {seq_label}{on}", tensors, meta, dt,
                    **({"per_layer": chosen} if by_layer else {}))
            dense = {n: torch.from_numpy(tensors[n].to_dense()) for n in tensors}
            r["fresh_mean_cos"], r["fresh_min_cos"] = b.score(dense, fresh=True)
            r["calibration_error"] = calibration_error(tensors)
            rows.append(r)
            out["lookup"] = rows
            save()

    if "rounds" in parts:  # masks chosen in rounds of refits (refit.py); then more everyday calibration text
        rows = []

        def measured(label, tensors, meta, dt, **extra):
            r = row(label, tensors, meta, dt, **extra)
            dense = {n: torch.from_numpy(tensors[n].to_dense()) for n in tensors}
            r["fresh_mean_cos"], r["fresh_min_cos"] = b.score(dense, fresh=True)
            rows.append(r)
            out["rounds"] = rows
            save()

        lookup_label = f"ALL weights: embeddings 70%, every Linear 30%, {seq_label}"
        for files in ((CALIBRATION_EVERYDAY,), (CALIBRATION_EVERYDAY, CALIBRATION_MORE)):
            batches, cal, seconds = b.calibrate(files)
            out.setdefault("rounds_calibration", []).append(
                {"files": [f.name for f in files], "texts": sum(len(b.hf.read_texts(f)) for f in files),
                 "seconds": seconds})
            on = f"; calibrated on {' + '.join(f.name for f in files)}; embeddings compensated"
            if len(files) > 1:  # the same row as the one-pass row of the lookup part, on more text
                tensors, meta, dt, _ = split(0.7, 0.3, True, tables="lookup")
                measured(f"{lookup_label}{on}", tensors, meta, dt)
            tensors, meta, dt, _ = split(0.7, 0.3, True, tables="lookup", rounds=ROUNDS)
            measured(f"{lookup_label}{on}; masks in {ROUNDS} rounds of refits", tensors, meta, dt)
        tensors, meta, dt, chosen = split(0.7, 0.3, True, by_layer=True, tables="lookup", rounds=ROUNDS)
        measured(f"ALL weights: embeddings 70%, Linear 30% overall in per-layer fractions (probed), {seq_label}{on}; "
                 f"masks in {ROUNDS} rounds of refits", tensors, meta, dt, per_layer=chosen)
        res, dt = compress(sparsity=0.5, sparsity_by_layer=True, probe=True, sequential=True, skip_sums=sums,
                           prune_rounds=ROUNDS)
        measured(f"50% of the Linear weights, per-layer fractions (probed), {seq_label}"
                 f"{on.split('; embeddings')[0]}; masks in {ROUNDS} rounds of refits", res.tensors, res.metadata, dt,
                 per_layer=per_layer(res))


def distill(b, tensors, names, linear, batches, ft):
    """Adam on the kept (non-zero) Linear weights and on every exactly-stored parameter of the
    decoded model, towards the float model's embeddings on the calibration batches (masks
    fixed); then each Linear weight is rounded back to the grid with its zeros kept."""
    from nnshrink.compressed import DenseTensor
    from nnshrink.ptq.layer import LayerSetting, compress_weight
    from nnshrink.ptq.tune import _relative_error

    work = copy.deepcopy(b.model)
    decoded = {n: torch.from_numpy(tensors[n].to_dense()) for n in names}
    work.load_state_dict({k: decoded.get(k, v).to(v.dtype) for k, v in b.original.items()})
    params = dict(work.named_parameters())
    exact = [n for n in ft if n not in names and n in params]
    train = linear + exact
    masks = {n: (decoded[n] != 0).to(torch.float32) for n in linear}
    for n, p in params.items():
        p.requires_grad_(n in train)
    with torch.no_grad():
        ref = [b.hf.mean_pooled(b.model, x) for x in batches]
    opt = torch.optim.Adam([params[n] for n in train], lr=DISTILL_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, DISTILL_STEPS)
    work.eval()
    for step in range(DISTILL_STEPS):
        i = step % len(batches)
        loss = _relative_error(b.hf.mean_pooled(work, batches[i]), ref[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for n in linear:
                params[n].mul_(masks[n])
    new = dict(tensors)
    for n in exact:
        new[n] = DenseTensor(params[n].detach().numpy().astype(np.float32))
    for n in linear:
        w = params[n].detach().numpy().astype(np.float32)
        frac = float((w == 0).mean())
        new[n] = compress_weight(w, LayerSetting(8, 0.0, frac, STEP))[0]
    return new, {"steps": DISTILL_STEPS, "lr": DISTILL_LR, "loss": "relative squared error of the embeddings",
                 "trained_parameters": int(sum(int(masks[n].sum()) for n in linear)
                                           + sum(params[n].numel() for n in exact))}


KEEP_LABELS = {"all_by_layer": "per-layer fractions (probed), sequential, skip sums restored",
               **{f"split_{e}": f"embeddings {e:.0%}, every Linear {lf:.0%}, sequential, skip sums restored"
                  for e, lf in SPLITS}}


def _table(rows: list[dict]) -> list[str]:
    fresh = any("fresh_mean_cos" in r for r in rows)
    lines = ["| experiment | bytes | ratio | mean cos | min cos | zero: all weights | zero: Linear weights | seconds |"
             + (" fresh: mean / min cos |" if fresh else ""), "|---|---|---|---|---|---|---|---|" + ("---|" if fresh else "")]
    for r in rows:
        lines.append(f"| {r['experiment']} | {r['bytes']:,} | {r['ratio']:.2f}x | {r['mean_cos']:.4f} | "
                     f"{r['min_cos']:.4f} | {r['zero_all']:.1%} | {r['zero_linear']:.1%} | {r['seconds']:.0f} |"
                     + (f" {r['fresh_mean_cos']:.4f} / {r['fresh_min_cos']:.4f} |" if fresh else ""))
    return lines


def _fractions(per_layer: dict) -> str:
    """The per-layer fractions of a by-layer row, in words: embeddings, then each Linear kind over layers 0..n."""
    kinds: dict[str, list] = {}
    other = []
    for name, f in per_layer.items():
        if name.startswith("encoder.layer."):
            kind = name.split(".", 3)[3].rsplit(".", 1)[0]
            kinds.setdefault(kind, []).append(f"{f:.0%}")
        elif f:
            other.append(f"{name.rsplit('.', 1)[0]} {f:.0%}")
    return "; ".join(other + [f"{k} {'/'.join(v)}" for k, v in sorted(kinds.items())])


def section(out: dict) -> str:
    """The markdown section, every figure from ``out`` (the JSON of a run)."""
    m = out.get("machine", {})
    lines = ["## 50% unstructured sparsity on MiniLM without retraining (issue 14)", "",
             "    " + out.get("command", COMMAND), "",
             f"all-MiniLM-L6-v2 ({out.get('numel', 0) / 1e6:.1f}M weights, {out.get('linear_numel', 0) / 1e6:.1f}M of "
             f"them in Linear layers), the 64 measured sentences and the {out.get('calibration_texts', 352)} "
             "calibration texts of section 25 (the measured sentences are never used for calibration, tuning or any "
             "choice). Every row is a written .nsk archive, read back and decoded: ratio = float32 bytes / file "
             "bytes; zero fractions counted in the decoded weights (all weights: every tensor of the file). Uniform "
             f"grid step {out.get('step', STEP)} x RMS for every shared tensor. Machine: {m.get('cpu_count')}-core "
             f"CPU, torch {m.get('torch')}, {m.get('torch_threads')} torch thread; {out.get('note', '')}. "
             f"Calibration (Fisher and Hessians, once for all rows): {out.get('calibration_seconds', 0):.0f} s.", "",
             "`one pass`: SparseGPT on every Linear against the inputs the float model gives it (as before). "
             "`sequential` (`compress_model(sequential=True)`, `--sequential`; nnshrink/ptq/sequential.py): layer "
             "group after layer group (query/key/value together, then the attention output, the FFN's two Linears), "
             "each reconstructs the float layer's outputs from the inputs the already-compressed model gives it: "
             "SparseGPT on W* = W + (T - T~)' X~ (X~'X~ + l I)^-1 with Hessian X~'X~ (T: the float outputs, T~: the "
             "float layer's outputs on the compressed inputs X~, l: 0.1 x mean diagonal). `skip sums restored` "
             "(`skip_sums=hf.post_norm_sums(model)`, what `--hf-model DIR --sequential` does): the attention and FFN "
             "output projections reconstruct the float input of the LayerNorm after them (their output plus the skip "
             "connection), so they also repair the error the skip path carries. `per-layer fractions`: the "
             "existing allocator (sparsity.py, probed) picks each tensor's fraction so that 50% of the named weights "
             "are zero at least estimated error; over ALL weights (`sparsity_over=\"all\"`, `--sparsity-over all`) "
             "the embeddings were pruned by Fisher x w^2, their error the Fisher estimate: so in every table but the "
             "last, the `50% of ALL weights, per-layer fractions` rows included (measured with that earlier "
             "compress_model). `embeddings compensated` (the last table, `--parts lookup`): as compress_model now "
             "prunes a lookup table, SparseGPT on the table with G'G as its Hessian, G the output gradients at the "
             "rows looked up on the calibration texts (calibrate.py `lookup`; the LayerNorm after the lookup makes "
             "the all-ones direction free to absorb the pruned entries), each row's scores weighed by its Fisher sum "
             "plus the mean row's, so rows the calibration never looked up are not emptied first."]
    for key, title in (("linear", "Half of the Linear weights zero (embeddings dense):"),
                       ("all", "Half of ALL weights zero:"),
                       ("tune", f"Norms and biases tuned on the calibration texts on top ({out.get('tune_steps')} "
                                "Adam steps, shared weights unchanged, tune.py):"),
                       ("distill", "For comparison only, RETRAINING on the calibration texts (does not count as "
                                   "without retraining):"),
                       ("everyday", "Calibrated (and tuned) on everyday text instead, the kind of text measured "
                                    "(benchmarks/data/calibration_everyday.txt, 827 sentences written for calibration, "
                                    "section 25; calibration "
                                    f"{out.get('everyday_calibration_seconds', 0):.0f} s); fresh: the 62 sentences of "
                                    "benchmarks/data/sentences_fresh.txt, never used for any choice:"),
                       ("lookup", "The embeddings compensated (calibrate.py `lookup`), calibrated on everyday text "
                                  "as above; fresh as above:"),
                       ("rounds", "Masks chosen in rounds of least-squares refits (`compress_model(prune_rounds=5)`, "
                                  "`--prune-rounds 5`; nnshrink/ptq/refit.py: each round scores the refit weights by "
                                  "OBS saliency w^2 / [H^-1]_jj^2 over the whole tensor, prunes to the next fraction "
                                  "of a cubic schedule and refits the kept weights by least squares, GPTQ then "
                                  "rounding them onto the grid with the mask fixed), and calibrated on more everyday "
                                  "text: calibration_everyday.txt + calibration_everyday_more.txt ("
                                  + ", ".join(f"{c['texts']} texts, calibration {c['seconds']:.0f} s"
                                              for c in out.get("rounds_calibration", [])[1:])
                                  + "; the 2,940 added sentences were written for calibration, none sharing a run "
                                  "of four words with a measured or fresh sentence); fresh as above:")):
        if out.get(key):
            lines += ["", title, ""] + _table(out[key])
    for r in out.get("all", []) + out.get("linear", []) + out.get("lookup", []) + out.get("rounds", []):
        if r.get("per_layer") and "sequential" in r["experiment"]:
            lines += ["", f"Fractions chosen for \"{r['experiment']}\" (layers 0..5): {_fractions(r['per_layer'])}."]
    post = [r for k in ("linear", "all", "tune", "everyday", "lookup", "rounds") for r in out.get(k, [])]
    if post:
        half_all = [r for r in post if r["zero_all"] >= 0.5]
        half_lin = [r for r in post if r["zero_linear"] >= 0.5]
        lines += ["", "Reading:", ""]
        for what, rows in (("50% of all weights zero", half_all), ("50% of the Linear weights zero", half_lin)):
            if rows:
                best = max(rows, key=lambda r: r["mean_cos"])
                lines.append(f"- Best post-training row with {what}: \"{best['experiment']}\", mean cosine "
                             f"{best['mean_cos']:.4f} (min {best['min_cos']:.4f}) at {best['ratio']:.2f}x, "
                             f"{best['seconds']:.0f} s on the loaded machine (calibration not included).")
        for a in (r for r in post if r["experiment"].endswith(", one pass")):
            base = a["experiment"][:-len(", one pass")]
            later = [r for r in post if r["experiment"].startswith(base + ", sequential")]
            if later:
                lines.append(f"- {base}: one pass {a['mean_cos']:.4f} (min {a['min_cos']:.4f}, {a['seconds']:.0f} s) -> "
                             + "; ".join(f"{r['experiment'][len(base) + 2:]} {r['mean_cos']:.4f} (min "
                                         f"{r['min_cos']:.4f}, {r['seconds']:.0f} s)" for r in later) + ".")
        errs = out.get("split_calibration_errors") or {}
        splits = {f"split_{e}": r for r in out.get("all", []) for e, lf in SPLITS
                  if r["experiment"] == f"ALL weights: embeddings {e:.0%}, every Linear {lf:.0%}, sequential, skip sums "
                                        "restored"}
        if errs and splits.keys() >= errs.keys():
            by_cal = min(errs, key=errs.get)
            by_cos = max(splits, key=lambda k: splits[k]["mean_cos"])
            lines.append("- Embeddings / Linear splits, error on the calibration texts against mean cosine on the "
                         "measured sentences: " + "; ".join(
                             f"{float(k[6:]):.0%}: {errs[k]:.4f} / {splits[k]['mean_cos']:.4f}" for k in errs)
                         + f". The calibration texts pick {float(by_cal[6:]):.0%}, the measured sentences would pick "
                         f"{float(by_cos[6:]):.0%}" + (": most likely because pruning the embedding rows of tokens "
                                                      "the calibration texts never use costs nothing on them, so they (and the Fisher "
                                                      "estimate the per-layer allocator uses) underrate the "
                                                      "embeddings' error." if by_cal != by_cos else "."))
        compensated = out.get("lookup", [])
        for r in compensated:
            base = r["experiment"].split("; embeddings compensated")[0]
            before = [x for x in out.get("everyday", []) if x["experiment"] == base]
            if before:
                lines.append(f"- {base.split(', sequential')[0]}, everyday calibration: embeddings by Fisher x w^2 "
                             f"alone {before[0]['mean_cos']:.4f} (min {before[0]['min_cos']:.4f}; fresh "
                             f"{before[0]['fresh_mean_cos']:.4f}) -> compensated {r['mean_cos']:.4f} (min "
                             f"{r['min_cos']:.4f}; fresh {r['fresh_mean_cos']:.4f}) at {r['ratio']:.2f}x.")
        fixed = [r for r in compensated if "every Linear" in r["experiment"]]
        if fixed and all("calibration_error" in r for r in fixed):
            by_cal = min(fixed, key=lambda r: r["calibration_error"])
            by_cos = max(fixed, key=lambda r: r["mean_cos"])
            lines.append("- Compensated splits, error on the calibration texts against mean cosine on the measured "
                         "sentences: " + "; ".join(f"{r['experiment'].split(',')[0][len('ALL weights: '):]}: "
                                                   f"{r['calibration_error']:.4f} / {r['mean_cos']:.4f}"
                                                   for r in fixed)
                         + (". The calibration texts again pick the split with the most embedding sparsity, the "
                            "measured sentences one with less." if by_cal is not by_cos else "."))
        for r in out.get("rounds", []):
            if "rounds of refits" not in r["experiment"]:
                continue
            base = r["experiment"].split("; masks in")[0]
            before = [x for x in post if x["experiment"] == base]
            if before:
                lines.append(f"- {base}: SparseGPT's one pass {before[0]['mean_cos']:.4f} (min "
                             f"{before[0]['min_cos']:.4f}; fresh {before[0]['fresh_mean_cos']:.4f}) -> masks in "
                             f"rounds {r['mean_cos']:.4f} (min {r['min_cos']:.4f}; fresh {r['fresh_mean_cos']:.4f}).")
        for r in out.get("tune", []):
            base = r["experiment"].split(", norms and biases tuned")[0]
            before = [x for x in post if x["experiment"] in (base, base.replace("50% of ALL weights, ", "ALL weights: "))]
            if before:
                lines.append(f"- Tuning norms and biases on \"{base}\": {before[0]['mean_cos']:.4f} -> "
                             f"{r['mean_cos']:.4f} (calibration error {r['tuning']['calibration_error_before']:.4f} -> "
                             f"{r['tuning']['calibration_error_after']:.4f}).")
        for r in out.get("distill", []):
            lines.append(f"- Retraining (distillation on the calibration texts, labelled so above, not counted): "
                         f"mean cosine {r['mean_cos']:.4f} (min {r['min_cos']:.4f}), {r['seconds']:.0f} s.")
        met = [r for r in half_all if r["mean_cos"] >= 0.99]
        lines.append("- Target \"50% unstructured sparsity at mean cosine >= 0.99 without retraining\": "
                     + (f"met, counted over all weights: {len(met)} row(s) with half of all weights zero reach it, "
                        f"the best {max(r['mean_cos'] for r in met):.4f}" if met else
                        f"NOT met: the best row with half of all weights zero reaches "
                        f"{max(r['mean_cos'] for r in half_all):.4f}" if half_all else "NOT measured")
                     + (f"; counted over the Linear weights alone (embeddings dense) the best reaches "
                        f"{max(r['mean_cos'] for r in half_lin):.4f}" if half_lin else "") + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    raise SystemExit(main())
