"""Issue 7's storage figure: binarised layers' bytes in the archive against float32.

Trains lenet5-bwn and lenet5-xnor briefly with `nnshrink train` (storage does not depend
on how long they train), packs each with `nnshrink compress --recipe binary`, and reads
the per-record sizes back with `nnshrink inspect --json`.

    python benchmarks/binary_storage.py --json benchmarks/results/binary_storage.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import machine, nnshrink, write_json  # noqa: E402



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--out-dir", default="runs/binary")
    ap.add_argument("--epochs", type=float, default=0.3)
    args = ap.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "epochs": args.epochs, "models": {}}
    for name in ("lenet5-bwn", "lenet5-xnor"):
        ckpt, nsk = out / f"{name}.safetensors", out / f"{name}.nsk"
        nnshrink("train", "--model", name, "--epochs", args.epochs, "--quiet", "--force", "-o", ckpt)
        nnshrink("compress", ckpt, "--recipe", "binary", "-o", nsk, "--force", "--quiet")
        rep = json.loads(nnshrink("inspect", nsk, "--json"))
        binary = [r for r in rep["layers"] if r["encoding"] == "binary"]
        f32 = sum(4 * r["params"] for r in binary)
        stored = sum(r["bytes"] for r in binary)
        results["models"][name] = {
            "binary_layers": {r["name"]: {"params": r["params"], "bytes": r["bytes"],
                                          "ratio": 4 * r["params"] / r["bytes"]} for r in binary},
            "binary_float32_bytes": f32, "binary_stored_bytes": stored, "binary_ratio": f32 / stored,
            "file_bytes": rep["compressed_bytes"], "whole_model_ratio": rep["ratio"]}
    write_json(results, args.json)


if __name__ == "__main__":
    main()
