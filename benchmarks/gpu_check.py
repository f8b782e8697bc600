"""The GPU check: each CUDA path of nnshrink run once, timed beside its recorded CPU figure.

One prepared run for a machine with a GPU (``benchmarks/gpu_check.sh`` calls it):

    python benchmarks/gpu_check.py --device cuda --json OUT.json

Steps, each the same work as the CPU figure it is shown beside (the figure is read from
``benchmarks/results/*.json``, named in the output with its key):

- ``lenet5_train``: ``nnshrink train --model lenet5`` (12 epochs) on the device;
- ``lenet5_deep_compression``: ``nnshrink compress`` of that checkpoint with the
  deep-compression recipe, retraining on the device (k-means runs on CPU);
- ``bwn_epoch`` / ``xnor_epoch``: one training epoch of lenet5-bwn / lenet5-xnor;
- ``own_model_train`` / ``own_model_compress``: the ResNet-BN own-model example
  (``examples/resnet_bn.py --device``): its training loop, then ``nnshrink.compress``
  with the user's ``fine_tune`` on the device;
- ``ptq_calibration``: post-training compression of LeNet-5 with 512 calibration images
  (``nnshrink.ptq.compress_model``; the calibration pass runs on the device);
- ``vgg16_encode_decode``: ``benchmarks/vgg16_scale.py`` (compress --no-retrain, then
  decompress, of a 138M-parameter file): CPU work by design, timed on this machine's CPU.

A step that fails is recorded with its error and the run exits 1 after the others ran.
``--device cpu --quick`` runs every step on tiny synthetic data in seconds (the test
suite runs it to check the JSON); quick timings are not comparable with the CPU figures,
so the ratio is left out. Fashion-MNIST must be installed for the full run.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import platform
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._util import machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

# step -> (results file, key path, what the CPU figure measured)
CPU_FIGURES: dict[str, tuple[str, tuple, str]] = {
    "lenet5_train": ("deep_compression.json", ("models", "lenet5", "train_s"), "nnshrink train, 12 epochs"),
    "lenet5_deep_compression": ("deep_compression.json", ("models", "lenet5", "compress_s"),
                                "nnshrink compress --recipe deep-compression"),
    "bwn_epoch": ("binary_lenet.json", ("variants", "bwn", "epochs", 0, "seconds"), "first training epoch"),
    "xnor_epoch": ("binary_lenet.json", ("variants", "xnor", "epochs", 0, "seconds"), "first training epoch"),
    "own_model_train": ("own_models.json", ("examples", "resnet_bn", "train_seconds"), "8 epochs, own loop"),
    "own_model_compress": ("own_models.json", ("examples", "resnet_bn", "compress_seconds"),
                           "nnshrink.compress with fine_tune"),
    "ptq_calibration": ("post_training_cnn.json", ("rows", ("setting", "4 bits", "tool", "nnshrink calibrated"),
                                                   "seconds"), "calibrated 4 bits, 512 images"),
    "vgg16_encode_decode": ("vgg16_scale.json", ("total_s",), "compress --no-retrain + decompress"),
}
STEPS = tuple(CPU_FIGURES)
QUICK_EPOCHS = "0.05"


def cpu_figure(step: str) -> tuple[float | None, str]:
    """The recorded CPU seconds of ``step`` and where they come from (None when absent)."""
    name, keys, what = CPU_FIGURES[step]
    where = f"benchmarks/results/{name}:{'.'.join(str(k if not isinstance(k, tuple) else k[1]) for k in keys)}"
    try:
        node = json.loads((RESULTS / name).read_text())
        for k in keys:
            if isinstance(k, tuple):  # (field, value, field, value): the row of a list that matches
                node = next(r for r in node if all(r.get(f) == v for f, v in zip(k[::2], k[1::2])))
            else:
                node = node[k]
        return float(node), f"{where} ({what})"
    except (OSError, ValueError, KeyError, IndexError, StopIteration, TypeError):
        return None, f"{where}: not found"


def write_tiny_idx(folder: Path, n_train: int = 256, n_test: int = 128) -> Path:
    """Four gzipped IDX files of a small learnable set (class c: a bright square at a
    class-specific place), so the quick run needs no dataset."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 + 8 * (c // 3):8 + 8 * (c // 3), 2 + 8 * (c % 3):8 + 8 * (c % 3)] = 230
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            head = struct.pack(">HBB", 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(head + arr.tobytes()))
    return folder


class Check:
    """The run's settings and what the steps hand each other (the trained LeNet-5)."""

    def __init__(self, device: str, quick: bool, work: Path):
        self.device, self.quick, self.work = device, quick, work
        self.data_dir = write_tiny_idx(work / "tinyset") if quick else None
        self.data_args = ["--dataset", "idx", "--data-dir", str(self.data_dir)] if quick else ["--dataset",
                                                                                           "fashion-mnist"]
        self.lenet5 = work / "lenet5.safetensors"

    def sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def cli(self, *argv: str) -> None:
        """``nnshrink ARGV`` in this process; its tables go to stderr (stdout stays clean)."""
        from nnshrink.cli import main

        with contextlib.redirect_stdout(sys.stderr):
            rc = main([*map(str, argv)])
        if rc != 0:
            raise RuntimeError(f"nnshrink {' '.join(map(str, argv[:2]))} ... exited {rc}")

    def dataset(self):
        from nnshrink.data import load_dataset

        return load_dataset(*(("idx", self.data_dir) if self.quick else ("fashion-mnist",)))


def step_lenet5_train(c: Check) -> dict:
    quick = ["--epochs", QUICK_EPOCHS] if c.quick else []
    c.cli("train", "--model", "lenet5", *c.data_args, "--device", c.device, "-o", c.lenet5, "--force", "--quiet",
          *quick)
    return {}


def step_lenet5_deep_compression(c: Check) -> dict:
    if not c.lenet5.is_file():
        raise RuntimeError("no LeNet-5 checkpoint: lenet5_train failed")
    report = c.work / "lenet5.json"
    quick = ["--epochs-scale", "0.01"] if c.quick else []
    c.cli("compress", c.lenet5, "-o", c.work / "lenet5.nsk", *c.data_args, "--device", c.device, "--force",
          "--quiet", "--json", report, *quick)
    r = json.loads(report.read_text())
    return {"ratio": r["ratio"], "top1_before": r["top1_before"], "top1_after": r["top1_after"]}


def _binary_epoch(c: Check, name: str) -> dict:
    from nnshrink.models import build_model
    from nnshrink.quantize.binary import clip_binary_weights
    from nnshrink.train import default_train_config, fit

    cfg = default_train_config(name).replace(epochs=1, **({"max_steps": 3} if c.quick else {}))
    r = fit(build_model(name), c.dataset(), cfg, device=c.device, after_step=[clip_binary_weights],
            eval_each_epoch=False, progress=False)
    return {"steps": r.steps, "train_top1": r.epochs[0]["train_top1"]}


def step_bwn_epoch(c: Check) -> dict:
    return _binary_epoch(c, "lenet5-bwn")


def step_xnor_epoch(c: Check) -> dict:
    return _binary_epoch(c, "lenet5-xnor")


def step_own_model(c: Check) -> list[dict]:
    """Two rows from one run of the example: its training, then its compression."""
    from examples import resnet_bn

    argv = ["--out", str(c.work / "resnet_bn"), "--device", c.device, "--retrain"]
    if c.quick:
        argv += ["--subset", "64", "--epochs", "0.5", "--data-dir", str(c.data_dir)]
    with contextlib.redirect_stdout(sys.stderr):
        s = resnet_bn.main(argv)
    extra = {"ratio": s["ratio"], "top1_float": s["top1_float"], "top1_loaded": s["top1_loaded"]}
    return [{"step": "own_model_train", "seconds": s["train_seconds"]},
            {"step": "own_model_compress", "seconds": s["compress_seconds"], **extra}]


def step_ptq_calibration(c: Check) -> dict:
    import torch

    from nnshrink.checkpoint import load_checkpoint
    from nnshrink.ptq.compress import compress_model

    if not c.lenet5.is_file():
        raise RuntimeError("no LeNet-5 checkpoint: lenet5_train failed")
    model, _ = load_checkpoint(c.lenet5)
    model.to(c.device).eval()
    x = c.dataset().train_x
    n = min(512, len(x))
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
    calib = [x[pick[i:i + 64]].to(c.device) for i in range(0, n, 64)]
    t0 = time.perf_counter()
    result = compress_model(model, calib, bits=4)
    c.sync()
    return {"seconds": time.perf_counter() - t0, "compressed_bytes": len(result.to_bytes())}


def step_vgg16_encode_decode(c: Check) -> dict:
    """The scale benchmark as it is (its own child processes, on CPU)."""
    out = c.work / "vgg16_scale.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "vgg16_scale.py"), "--work", str(c.work / "vgg16"),
           "--json", str(out)] + (["--model", "lenet5"] if c.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"vgg16_scale.py exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    r = json.loads(out.read_text())
    return {"seconds": r["total_s"], "runs_on": "cpu", "peak_rss_bytes": r["peak_rss_bytes"],
            "dense_bytes": r["dense_bytes"], "archive_bytes": r["archive_bytes"]}


# each runner gives one row or several; the names it covers (for a row when it fails)
RUNNERS: list[tuple[Callable, tuple[str, ...]]] = [
    (step_lenet5_train, ("lenet5_train",)),
    (step_lenet5_deep_compression, ("lenet5_deep_compression",)),
    (step_bwn_epoch, ("bwn_epoch",)),
    (step_xnor_epoch, ("xnor_epoch",)),
    (step_own_model, ("own_model_train", "own_model_compress")),
    (step_ptq_calibration, ("ptq_calibration",)),
    (step_vgg16_encode_decode, ("vgg16_encode_decode",)),
]


def run_steps(c: Check, only: set[str] | None = None) -> list[dict]:
    rows = []
    for fn, names in RUNNERS:
        if only and not only & set(names):
            continue
        print(f"gpu_check: {', '.join(names)} on {c.device} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            got = fn(c)
            c.sync()
            seconds = time.perf_counter() - t0
            got_rows = got if isinstance(got, list) else [{"step": names[0], "seconds": seconds, **got}]
            rows += [{"ok": True, "error": None, "device": c.device, **r} for r in got_rows]
        except BaseException as exc:  # noqa: BLE001  a failed step is recorded; the run goes on
            if isinstance(exc, KeyboardInterrupt):
                raise
            traceback.print_exc()
            rows += [{"step": n, "ok": False, "seconds": None, "device": c.device,
                      "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]} for n in names]
    for r in rows:
        r.setdefault("runs_on", "cpu" if r["step"] == "vgg16_encode_decode" else c.device)
        cpu, source = cpu_figure(r["step"])
        r["cpu_seconds"], r["cpu_source"] = cpu, source
        comparable = not c.quick and r["ok"] and cpu is not None and r["seconds"]
        r["cpu_over_device"] = cpu / r["seconds"] if comparable else None
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'step':<26} {'here (s)':>9} {'CPU (s)':>9} {'CPU/here':>9}  CPU figure",
             "-" * 100]
    for r in rows:
        here = f"{r['seconds']:.1f}" if r["ok"] else "FAILED"
        cpu = f"{r['cpu_seconds']:.1f}" if r["cpu_seconds"] is not None else "-"
        ratio = f"{r['cpu_over_device']:.1f}x" if r["cpu_over_device"] else "-"
        lines.append(f"{r['step']:<26} {here:>9} {cpu:>9} {ratio:>9}  {r['cpu_source']}")
        if not r["ok"]:
            lines.append(f"{'':<26} error: {r['error']}")
    return "\n".join(lines)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:  # Linux names the CPU model here; platform.processor() often says only "x86_64"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny synthetic data, seconds: checks the script, not speed")
    ap.add_argument("--json", default=None, metavar="OUT", help="write the results here")
    ap.add_argument("--work", default=None, help="folder for checkpoints and archives (default: a temporary one)")
    ap.add_argument("--only", default=None, help="comma-separated step names")
    args = ap.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    if only and only - set(STEPS):
        print(f"gpu_check: unknown step(s) {', '.join(sorted(only - set(STEPS)))}; steps: {', '.join(STEPS)}",
              file=sys.stderr)
        return 2

    from nnshrink.errors import NNShrinkError
    from nnshrink.train import resolve_device

    try:
        device = str(resolve_device(args.device))
    except NNShrinkError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = run_steps(Check(device, args.quick, work), only)
    result = {"command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "device": device, "device_name": device_name(device), "quick": args.quick, "machine": machine(),
              "ok": all(r["ok"] for r in rows), "total_s": time.perf_counter() - t0, "steps": rows}
    print(table(rows), file=sys.stderr)
    if args.json:
        from nnshrink.io_utils import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
    verdict = "all steps passed" if result["ok"] else "FAILED: " + ", ".join(r["step"] for r in rows if not r["ok"])
    print(f"gpu_check: {verdict} on {result['device_name']} in {result['total_s']:.0f} s", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
