"""The two MiniLM figures issue 14 still misses, and what was tried for them.

    python benchmarks/post_training_tuning.py --json benchmarks/results/post_training_tuning.json

One torch thread; the model, calibration texts and measured sentences are post_training.py's
(the 64 measured sentences are never used for calibration, tuning or any choice). Parts:

- ``tune``: norms and biases tuned on the calibration texts (``tune_steps``, nnshrink/ptq/tune.py;
  shared weights unchanged) on the 10x budget (--target-bpw 3.2, grid steps) and on 50% of every
  Linear weight pruned (SparseGPT, grid step 0.125); bytes are the written archive's.
- ``sparsity``: 50% of all Linear weights pruned overall, the per-layer fraction chosen by
  ``sparsity_by_layer`` (nnshrink/ptq/sparsity.py) from each layer's SparseGPT error at
  20..90%, rescaled by one measured output error at 50% (``probe``), with and without tuning;
  and 50% of ALL weights (embeddings too, pruned by Fisher-weighted magnitude: no compensation
  reaches them). ``mix``: about 50% of ALL weights with the embeddings pruned harder (70% / 80%)
  than the Linear weights (30% / 20%).
- ``sequential``: the 10x budget's per-layer grid steps, re-quantised layer after layer with
  Hessians of the inputs the already-compressed prefix gives (standard GPTQ practice).
- ``entropy``: how far the 10x archive is from the order-0 entropy of the values it stores.
- ``embedding``: the word embeddings alone, plain rounding against GPTQ with a data-free row
  Hessian P diag(g) (Wq'Wq + Wk'Wk + Wv'Wv + c tr(.)/d I) diag(g) P (g: the embedding
  LayerNorm's weight, P: mean removal, W: layer 0's query/key/value).
- ``everyday``: the 10x budget (probed) calibrated on benchmarks/data/calibration_everyday.txt
  (827 everyday sentences written for calibration) against calibration.txt, each without and
  with tuning on its own calibration texts.
- ``cli``: the 10x setting through the command line, timed whole (load, calibrate, compress,
  tune, write): ``nnshrink compress --hf-model DIR --calibration benchmarks/data/calibration.txt
  --target-bpw 3.2 --tune-steps 0 | 300``, and with calibration_everyday.txt, ``--probe
  --tune-steps 300``, with the archive scored like every row.

Every row is also scored on benchmarks/data/sentences_fresh.txt (62 everyday sentences written
after the settings were chosen, never used for any choice): ``fresh_mean_cos`` / ``fresh_min_cos``.
``--note`` says how busy the machine was; it goes beside the seconds.
``benchmarks/post_training.py --render`` puts the result into section 25.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._util import machine  # noqa: E402
from benchmarks.post_training import CALIBRATION, CALIBRATION_EVERYDAY, Bench, minilm_folder  # noqa: E402

COMMAND = "python benchmarks/post_training_tuning.py --json benchmarks/results/post_training_tuning.json"
TUNE_STEPS = 300
LOW_STEPS = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.125)  # post_training.py's candidates for the 10x rows


def _kind(name: str) -> str:
    return name.split(".", 3)[3].rsplit(".", 1)[0] if name.startswith("encoder.layer.") else name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--parts", default="tune,sparsity,mix,sequential,entropy,embedding,everyday,cli",
                    help="comma-separated parts to run; others are kept from an existing --json file")
    ap.add_argument("--note", default="shared 2-core machine, loaded by other work: seconds are wall-clock on a busy "
                    "machine", help="how busy the machine was (goes beside the seconds)")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from nnshrink.compressed import DenseTensor
    from nnshrink.format import parse_archive, serialize
    from nnshrink.ptq.compress import _compressible, compress_model, record_bytes
    from nnshrink.ptq.layer import LayerSetting, compress_weight
    from nnshrink.ptq.tune import tune_exact_parameters

    b = Bench(minilm_folder())
    ft = b.file_tensors
    batches, cal, seconds = b.calibrate()
    names = _compressible(ft, 1024)
    out: dict = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    out.update({"command": COMMAND, "machine": machine(), "tune_steps": TUNE_STEPS, "calibration_seconds": seconds,
                "note": args.note})

    def save():
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")

    def row(label, tensors, meta, seconds, **extra):
        blob = serialize(tensors, meta)
        dense = {k: torch.from_numpy(v) for k, v in parse_archive(blob, "<bench>").dense_arrays().items()}
        mean, low = b.score(dense)
        fresh_mean, fresh_low = b.score(dense, fresh=True)
        zero = sum(int((dense[n] == 0).sum()) for n in names) / b.numel
        r = {"experiment": label, "bytes": len(blob), "ratio": b.float_bytes / len(blob),
             "bpw": 8 * len(blob) / b.numel, "mean_cos": mean, "min_cos": low, "seconds": seconds,
             "fresh_mean_cos": fresh_mean, "fresh_min_cos": fresh_low, "zero_fraction_of_all_weights": zero, **extra}
        print(f"{label:<72} {r['ratio']:6.2f}x {r['bpw']:.3f} bpw cos {mean:.4f} (min {low:.4f}) fresh "
              f"{fresh_mean:.4f} (min {fresh_low:.4f}) {seconds:5.0f} s", flush=True)
        return r

    def tuned(res_tensors, meta, on=None):
        """(tensors with the exact parameters tuned, seconds, stats): tune.py on the decoded model,
        on the calibration batches ``on`` (default: calibration.txt's)."""
        t = time.perf_counter()
        decoded = {n: res_tensors[n].to_dense() for n in names}
        values, stats = tune_exact_parameters(b.model, decoded, [n for n in ft if n not in names],
                                              batches if on is None else on, b.hf.mean_pooled, steps=TUNE_STEPS)
        new = dict(res_tensors)
        new.update({n: DenseTensor(v.astype(np.float32)) for n, v in values.items()})
        return new, time.perf_counter() - t, stats

    def compress(**kw):
        t = time.perf_counter()
        res = compress_model(b.model, calibration=cal, state=ft, forward=b.hf.mean_pooled, **kw)
        return res, time.perf_counter() - t

    label_tuned = f", norms and biases tuned on the calibration texts ({TUNE_STEPS} steps; shared weights unchanged)"
    budget = None
    if parts & {"tune", "sequential", "entropy"}:
        budget, dt_budget = compress(target_bpw=3.2, candidate_steps=LOW_STEPS)
    if "tune" in parts:
        rows = [row("--target-bpw 3.2, grid steps", budget.tensors, budget.metadata, dt_budget)]
        new, dt, stats = tuned(budget.tensors, budget.metadata)
        rows.append(row("--target-bpw 3.2, grid steps" + label_tuned, new, budget.metadata, dt_budget + dt,
                        tuning=stats))
        sp, dt_sp = compress(step=0.125, sparsity=0.5)
        rows.append(row("50% of every Linear weight pruned (SparseGPT), grid step 0.125", sp.tensors, sp.metadata,
                        dt_sp))
        new, dt, stats = tuned(sp.tensors, sp.metadata)
        rows.append(row("50% of every Linear weight pruned (SparseGPT), grid step 0.125" + label_tuned, new,
                        sp.metadata, dt_sp + dt, tuning=stats))
        out["tune"] = rows
        save()

    if "sparsity" in parts:
        res, dt = compress(step=0.125, sparsity=0.5, sparsity_by_layer=True, probe=True, calibrate=batches)
        frac = {r["name"]: r["sparsity"] for r in res.rows}
        enc = [n for n in names if n in cal.hessian and n.startswith("encoder.layer.")]
        lin = [n for n in names if n in cal.hessian]
        zeros = {n: int((res.tensors[n].to_dense() == 0).sum()) for n in lin}
        by_kind: dict[str, list] = {}
        for n in enc:
            by_kind.setdefault(_kind(n), []).append(frac[n])
        extra = {"linear_zero_fraction": sum(zeros[n] for n in enc) / sum(ft[n].numel() for n in enc),
                 "all_linear_zero_fraction": sum(zeros.values()) / sum(ft[n].numel() for n in lin),
                 "pooler_sparsity": frac.get("pooler.dense.weight")}
        label = ("50% of all Linear weights pruned overall, per-layer fraction by measured error "
                 "(sparsity_by_layer, probe; SparseGPT), grid step 0.125")
        rows = [row(label, res.tensors, res.metadata, dt, sparsity_by_kind_layers_0_to_5=by_kind, **extra)]
        new, dt2, stats = tuned(res.tensors, res.metadata)
        rows.append(row(label + label_tuned, new, res.metadata, dt + dt2, tuning=stats, **extra))
        # 50% of ALL weights: the Linear ones as SparseGPT above at a uniform 50%, the embeddings by Fisher x w^2
        t = time.perf_counter()
        sp, _ = compress(step=0.125, sparsity=0.5)
        tensors = dict(sp.tensors)
        for n in names:
            if n not in cal.hessian:
                tensors[n] = compress_weight(ft[n].float().numpy(), LayerSetting(8, 0.0, 0.5, 0.125),
                                             cal.fisher[n].numpy(), None)[0]
        rows.append(row("50% of ALL weights pruned (Linear: SparseGPT; embeddings: Fisher x w^2), grid step 0.125",
                        tensors, sp.metadata, time.perf_counter() - t))
        out["sparsity"] = rows
        save()

    if "mix" in parts:  # 50% of ALL weights with the embeddings pruned harder than the Linear weights
        rows = []
        for emb_frac, lin_frac in ((0.7, 0.3), (0.8, 0.2)):
            t = time.perf_counter()
            sp, _ = compress(step=0.125, sparsity=lin_frac)
            tensors = dict(sp.tensors)
            for n in names:
                if n not in cal.hessian:
                    tensors[n] = compress_weight(ft[n].float().numpy(), LayerSetting(8, 0.0, emb_frac, 0.125),
                                                 cal.fisher[n].numpy(), None)[0]
            rows.append(row(f"ALL weights: embeddings {emb_frac:.0%} pruned (Fisher x w^2), every Linear "
                            f"{lin_frac:.0%} (SparseGPT), grid step 0.125", tensors, sp.metadata,
                            time.perf_counter() - t))
        out["sparsity_mix"] = rows
        save()

    if "sequential" in parts:
        t = time.perf_counter()
        steps = {r["name"]: r["step"] for r in budget.rows}
        modules = dict(b.model.named_modules())
        tensors = dict(budget.tensors)
        done = {n: torch.from_numpy(tensors[n].to_dense()) for n in names if not n.startswith("encoder.layer.")}
        groups = []
        for i in range(b.model.config.num_hidden_layers):
            p = f"encoder.layer.{i}."
            groups += [[p + f"attention.self.{k}.weight" for k in ("query", "key", "value")],
                       [p + "attention.output.dense.weight"], [p + "intermediate.dense.weight"],
                       [p + "output.dense.weight"]]
        for group in groups:  # the inputs this group sees with everything before it compressed
            seen = []
            hook = modules[group[0].rsplit(".", 1)[0]].register_forward_hook(
                lambda m, i, o: seen.append(i[0].detach().reshape(-1, i[0].shape[-1]).to(torch.float64)))
            b.model.load_state_dict({k: done.get(k, v).to(v.dtype) for k, v in b.original.items()})
            try:
                with torch.no_grad():
                    for batch in batches:
                        b.hf.mean_pooled(b.model, batch)
            finally:
                hook.remove()
                b.model.load_state_dict(b.original)
            x = torch.cat(seen)
            h = x.T @ x
            for n in group:
                tensors[n] = compress_weight(ft[n].float().numpy(), LayerSetting(8, step=steps[n]),
                                             cal.fisher[n].numpy(), h, damp=0.1)[0]
                done[n] = torch.from_numpy(tensors[n].to_dense())
        out["sequential"] = [row("--target-bpw 3.2, grid steps (one pass: calibration Hessians of the float model)",
                                 budget.tensors, budget.metadata, dt_budget),
                             row("same per-layer steps, sequential: Hessians of the compressed prefix's inputs",
                                 tensors, budget.metadata, dt_budget + time.perf_counter() - t)]
        save()

    if "entropy" in parts:  # how far the archive is from the order-0 entropy of what it stores
        from nnshrink.format import serialize as _serialize

        bits = 0.0
        for n, t in budget.tensors.items():
            if n in names:
                _, counts = np.unique(t.to_dense().ravel(), return_counts=True)
                bits += float(-(counts * np.log2(counts / counts.sum())).sum())
            else:
                bits += 8 * ft[n].numel() * ft[n].element_size()
        size = len(_serialize(budget.tensors, budget.metadata))
        out["entropy"] = {"experiment": "--target-bpw 3.2, grid steps: archive bytes over the order-0 entropy of each "
                          "shared tensor's decoded values (outliers included) plus the exact tensors' bytes",
                          "archive_bytes": size, "entropy_bytes": bits / 8, "overhead": size / (bits / 8) - 1}
        print(out["entropy"], flush=True)
        save()

    if "embedding" in parts:
        emb = "embeddings.word_embeddings.weight"
        w = ft[emb].float().numpy()
        g = ft["embeddings.LayerNorm.weight"].double()
        s = sum(ft[f"encoder.layer.0.attention.self.{k}.weight"].double().T
                @ ft[f"encoder.layer.0.attention.self.{k}.weight"].double() for k in ("query", "key", "value"))
        d = s.shape[0]
        p = torch.eye(d, dtype=torch.float64) - 1.0 / d
        rows = []
        for step in (1.0, 0.7):
            for c, damp in ((None, None), (1.0, 0.01), (4.0, 0.01)):
                t = time.perf_counter()
                h = None if c is None else p @ torch.diag(g) @ (s + c * float(torch.trace(s)) / d
                                                                * torch.eye(d, dtype=torch.float64)) @ torch.diag(g) @ p
                tensor = compress_weight(w, LayerSetting(8, step=step), cal.fisher[emb].numpy(), h,
                                         damp=damp if damp else 0.1)[0]
                mean, low = b.score({emb: torch.from_numpy(tensor.to_dense())})
                label = (f"word embeddings, grid step {step} x RMS, "
                         + ("plain rounding" if c is None else f"GPTQ with the row Hessian, c = {c:g}, damping {damp}"))
                rows.append({"experiment": label, "bpw": 8 * record_bytes(emb, tensor) / w.size, "mean_cos": mean,
                             "min_cos": low, "seconds": time.perf_counter() - t})
                print(f"{label:<72} {rows[-1]['bpw']:.3f} bpw cos {mean:.4f} (min {low:.4f})", flush=True)
        out["embedding"] = rows
        save()

    if "everyday" in parts:  # the 10x budget calibrated on everyday text, the kind of text that is measured
        rows = []
        every, cal_every, out["everyday_calibration_seconds"] = b.calibrate(CALIBRATION_EVERYDAY)
        for label, c, on in ((f"calibration.txt ({len(b.hf.read_texts(CALIBRATION))} lines)", cal, batches),
                             (f"calibration_everyday.txt ({len(b.hf.read_texts(CALIBRATION_EVERYDAY))} lines)",
                              cal_every, every)):
            t = time.perf_counter()
            res = compress_model(b.model, on, calibration=c, state=ft, forward=b.hf.mean_pooled, target_bpw=3.2,
                                 candidate_steps=LOW_STEPS, probe=True)
            dt = time.perf_counter() - t
            what = f"--target-bpw 3.2, grid steps, probed; calibrated on {label}"
            rows.append(row(what, res.tensors, res.metadata, dt))
            new, dt2, stats = tuned(res.tensors, res.metadata, on)
            rows.append(row(what + label_tuned, new, res.metadata, dt + dt2, tuning=stats))
            save()
        out["everyday"] = rows
        save()

    if "cli" in parts:
        import subprocess
        import tempfile

        from nnshrink.format import read_archive

        rows = []
        runs = [(CALIBRATION, tune, []) for tune in (0, TUNE_STEPS)] + [(CALIBRATION_EVERYDAY, TUNE_STEPS, ["--probe"])]
        for texts, tune, flags in runs:
            with tempfile.TemporaryDirectory() as tmp:
                arc = Path(tmp) / "m.nsk"
                cmd = ["--hf-model", str(minilm_folder()), "--calibration", str(texts), "--target-bpw", "3.2",
                       *flags, "--tune-steps", str(tune), "--quiet", "-o", str(arc)]
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "nnshrink", "compress", *cmd], check=True, capture_output=True,
                               env={**os.environ, "NNSHRINK_THREADS": "1", "OMP_NUM_THREADS": "1"})
                dt = time.perf_counter() - t
                dense = {k: torch.from_numpy(v) for k, v in read_archive(arc).dense_arrays().items()}
                mean, low = b.score(dense)
                fresh_mean, fresh_low = b.score(dense, fresh=True)
                size = arc.stat().st_size
            label = (f"nnshrink compress --hf-model DIR --calibration {texts.name} --target-bpw 3.2 "
                     + "".join(f + " " for f in flags) + f"--tune-steps {tune}")
            rows.append({"experiment": label, "bytes": size, "ratio": b.float_bytes / size, "bpw": 8 * size / b.numel,
                         "mean_cos": mean, "min_cos": low, "seconds": dt, "fresh_mean_cos": fresh_mean,
                         "fresh_min_cos": fresh_low})
            print(f"{label:<72} {rows[-1]['ratio']:6.2f}x cos {mean:.4f} (min {low:.4f}) {dt:5.0f} s", flush=True)
        out["cli"] = rows
        save()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    raise SystemExit(main())
