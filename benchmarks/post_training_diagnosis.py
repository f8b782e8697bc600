"""Where post-training compression of all-MiniLM-L6-v2 loses quality: the measurements behind
the choices in nnshrink/ptq (uniform grids, probed budgets) and behind the ideas dropped.

    python benchmarks/post_training_diagnosis.py --json benchmarks/results/post_training_diagnosis.json

One torch thread. The model, the calibration texts (benchmarks/data/calibration.txt) and the
measured sentences (benchmarks/data/sentences.txt, never used for calibration or choices)
are post_training.py's. Each experiment compresses only the tensors it names, decodes them
into the model and reports mean / min cosine of the sentence embeddings against the float
model's; bits per weight are the archive record bytes of the compressed tensors over their
weights. ``benchmarks/post_training.py --render`` puts the result into the section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._util import machine  # noqa: E402
from benchmarks.post_training import CALIBRATION, SENTENCES, minilm_folder  # noqa: E402

COMMAND = "python benchmarks/post_training_diagnosis.py --json benchmarks/results/post_training_diagnosis.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--parts", default="quantiser,embeddings,ablation,estimate,sparsity,probe",
                    help="comma-separated experiments to run; others are kept from an existing --json file")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    torch.set_num_threads(1)
    from safetensors.torch import load_file

    from nnshrink.ptq import hf
    from nnshrink.ptq.calibrate import collect, layer_input_rows
    from nnshrink.ptq.compress import _compressible, _owner_map, record_bytes
    from nnshrink.ptq.layer import LayerSetting, compress_weight
    from nnshrink.ptq.probe import output_errors

    folder = minilm_folder()
    model, tok = hf.load_model(folder)
    ft = load_file(str(folder / "model.safetensors"))
    orig = {k: v.clone() for k, v in model.state_dict().items()}
    evb = hf.text_batches(tok, hf.read_texts(SENTENCES))
    calb = hf.text_batches(tok, hf.read_texts(CALIBRATION))
    ref, cref = hf.embed(model, evb), hf.embed(model, calb)
    names = _compressible(ft, 1024)
    cal = collect(model, calb, forward=hf.mean_pooled, weights=_owner_map(model, names))
    lin = [n for n in names if n in cal.hessian and "layer." in n]
    emb = "embeddings.word_embeddings.weight"
    out: dict = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    out.update({"command": COMMAND, "machine": machine()})

    def score(w, batches=evb, reference=ref):
        model.load_state_dict({k: (torch.as_tensor(w[k]) if k in w else v).to(v.dtype) for k, v in orig.items()})
        try:
            c = (hf.embed(model, batches) * reference).sum(-1)
        finally:
            model.load_state_dict(orig)
        return float(c.mean()), float(c.min())

    def one(n, setting, *, hessian="cal", damp=0.1, row_scale=False, col_alpha=0.0):
        """(dense approximation, bytes) of one tensor; row_scale / col_alpha: fp16 scales per
        output row (its RMS) or per input column (diag(H)^-alpha), counted at 2 bytes each."""
        w = ft[n].float().numpy().astype(np.float64)
        h = cal.hessian.get(n) if hessian == "cal" else hessian
        imp = cal.fisher[n].numpy()
        extra, r, c = 0, np.ones((w.shape[0], 1)), np.ones((1, w.shape[1]))
        if row_scale:
            r = np.sqrt((w ** 2).mean(1, keepdims=True)).astype(np.float16).astype(np.float64)
            r[r == 0] = 1.0
            imp, extra = imp * r ** 2, extra + 2 * w.shape[0]
        if col_alpha and h is not None:
            d = torch.diag(h).numpy()
            c = (np.where(d > 0, d / d.mean(), 1.0) ** -col_alpha).astype(np.float16).astype(np.float64)[None, :]
            h, extra = h * torch.as_tensor(c.T @ c), extra + 2 * w.shape[1]
        t, _ = compress_weight((w / r / c).astype(np.float32), setting, imp, h, damp=damp)
        return t.to_dense() * r * c, record_bytes(n, t) + extra

    def group(label, ns, setting, **kw):
        t0 = time.perf_counter()
        w, nb = {}, 0
        for n in ns:
            w[n], b = one(n, setting, **kw)
            nb += b
        mean, low = score(w)
        row = {"experiment": label, "bpw": 8 * nb / sum(ft[n].numel() for n in ns), "mean_cos": mean,
               "min_cos": low, "seconds": time.perf_counter() - t0}
        print(f"{label:<60} {row['bpw']:.3f} bpw  cos {mean:.4f} (min {low:.4f})", flush=True)
        return row

    # 1. the quantiser: per-tensor k-means, per-row scales, uniform grid, per-column scales (Linear only)
    rows = []
    quantiser = "quantiser" in parts
    for b in (3, 4) if quantiser else ():
        rows.append(group(f"k-means {b} bits, per tensor", lin, LayerSetting(b)))
        rows.append(group(f"k-means {b} bits, fp16 scale per row", lin, LayerSetting(b), row_scale=True))
    for st in (0.7, 0.5, 0.35) if quantiser else ():
        rows.append(group(f"grid step {st} x RMS", lin, LayerSetting(8, step=st)))
    for st in (0.5, 0.35) if quantiser else ():
        rows.append(group(f"grid step {st} x RMS, fp16 scale per column diag(H)^-1/4", lin,
                          LayerSetting(8, step=st), col_alpha=0.25))
    for damp in (0.01, 1.0) if quantiser else ():
        rows.append(group(f"grid step 0.5 x RMS, damping {damp} (default 0.1)", lin, LayerSetting(8, step=0.5),
                          damp=damp))
    if quantiser:
        out["quantiser_linear_only"] = rows

    # 2. the word embeddings alone (11.7M of 22.7M weights; no Hessian: plain rounding)
    if "embeddings" in parts:
        out["word_embeddings_only"] = [group(f"word embeddings, grid step {st} x RMS", [emb], LayerSetting(8, step=st))
                                       for st in (1.0, 0.7, 0.5)]

    dense = {n: one(n, LayerSetting(8, step=0.5))[0] for n in lin} if parts & {"ablation", "estimate"} else {}
    if "ablation" in parts:
        # 3. which Linear kinds dominate (grid step 0.5, one kind at a time, cosine on the calibration texts)
        kinds = defaultdict(list)
        for n in lin:
            kinds[n.split(".", 3)[3].rsplit(".", 1)[0]].append(n)
        out["ablation_by_kind_step_0.5_calibration_texts"] = {
            k: 1 - score({n: dense[n] for n in ns}, calb, cref)[0] for k, ns in kinds.items()}
        print(out["ablation_by_kind_step_0.5_calibration_texts"], flush=True)

    if "estimate" in parts:
        # 4. the error estimate against the measured output error, per tensor (calibration batches)
        ests = {n: compress_weight(ft[n].float().numpy(), LayerSetting(8, step=0.5), cal.fisher[n].numpy(),
                                   cal.hessian.get(n))[1] for n in lin + [emb]}
        measured = output_errors(model, calb, hf.mean_pooled, {**dense, emb: one(emb, LayerSetting(8, step=0.5))[0]},
                                 limit=None)
        ratio = {n: ests[n] / measured[n] for n in ests}
        by_kind = defaultdict(list)
        for n, v in ratio.items():
            by_kind[n.split(".", 3)[3].rsplit(".", 1)[0] if n in lin else "word_embeddings"].append(v)
        rank = lambda v: np.argsort(np.argsort(np.asarray(v)))  # noqa: E731 -- no ties in measured floats
        spearman = np.corrcoef(rank([ests[n] for n in ests]), rank([measured[n] for n in ests]))[0, 1]
        out["estimate_over_measured"] = {"spearman": float(spearman),
                                         "by_kind_min_max": {k: [min(v), max(v)] for k, v in by_kind.items()}}
        print(out["estimate_over_measured"], flush=True)

    if "sparsity" in parts:
        # 5. 50% SparseGPT (grid step 0.125): one calibration pass vs sequential (each layer's Hessian
        # from inputs that went through the already-compressed earlier layers)
        sp = LayerSetting(8, sparsity=0.5, step=0.125)
        rows = [group("50% pruned, one pass, damping 0.1", lin, sp),
                group("50% pruned, one pass, damping 0.01", lin, sp, damp=0.01)]
        mods, params = dict(model.named_modules()), dict(model.named_parameters())
        t0, seq = time.perf_counter(), {}
        try:
            for n in lin:
                acc = []
                hook = mods[n.rsplit(".", 1)[0]].register_forward_hook(
                    lambda m, i, o: acc.append((lambda r: r.T @ r)(layer_input_rows(m, i[0].detach()).double())))
                with torch.no_grad():
                    for b in calb:
                        hf.mean_pooled(model, b)
                hook.remove()
                seq[n] = one(n, sp, hessian=sum(acc))[0]
                params[n].data.copy_(torch.as_tensor(seq[n], dtype=params[n].dtype))
        finally:
            model.load_state_dict(orig)
        mean, low = score(seq)
        rows.append({"experiment": "50% pruned, sequential calibration, damping 0.1", "mean_cos": mean, "min_cos": low,
                     "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
        out["sparsity_linear_only"] = rows
    # 6. does the probe pay? --target-bpw 3.2 / 5.3 on grid steps, estimates rescaled by the probe or not
    if "probe" in parts:
        from nnshrink.format.writer import serialize
        from nnshrink.ptq.compress import compress_model

        numel = sum(t.numel() for t in ft.values())
        rows = []
        coarse, fine = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.125), (0.35, 0.25, 0.18, 0.125, 0.09, 0.0625, 0.044)
        for (bpw, steps), probe in [((b, st), p) for b, st in ((3.2, coarse), (5.3, fine)) for p in (True, False)]:
            t0 = time.perf_counter()
            res = compress_model(model, calb, calibration=cal, state=ft, forward=hf.mean_pooled, target_bpw=bpw,
                                 candidate_steps=steps, probe=probe)
            nbytes = len(serialize(res.tensors, res.metadata))
            mean, low = score({k: t.to_dense() for k, t in res.tensors.items()})
            rows.append({"experiment": f"--target-bpw {bpw}, grid steps, {'probed' if probe else 'estimates only'}",
                         "bpw": 8 * nbytes / numel, "mean_cos": mean, "min_cos": low,
                         "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)
        out["probe_whole_model"] = rows
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    raise SystemExit(main())
