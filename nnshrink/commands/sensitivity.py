"""``nnshrink sensitivity``: prune each layer alone at rising sparsity and report top-1
(BatchNorm statistics re-estimated at every point; a progress bar on stderr)."""

from __future__ import annotations

from ._common import add_data_args, add_device_arg, add_force_arg, add_json_arg, check_outputs, emit_json


def _steps(text: str) -> list[float]:
    from ..errors import ConfigError

    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--steps must be comma-separated sparsities like 0.5,0.8,0.9; got {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser("sensitivity", help="per-layer pruning sensitivity of a checkpoint (no retraining)")
    p.add_argument("checkpoint", help="checkpoint (.safetensors) written by nnshrink")
    add_data_args(p)
    add_device_arg(p)
    p.add_argument("--steps", default=None, help="comma-separated sparsities (default 0.1..0.99)")
    p.add_argument("--layers", default=None, help="comma-separated layer name patterns (default: all)")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="allowed top-1 drop (fraction) for the suggested per-layer sparsities")
    p.add_argument("--plot", default=None, metavar="PNG", help="write the curves as a PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it goes to stderr)")
    add_json_arg(p)
    add_force_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import load_dataset
    from ..loading import load_model
    from ..prune.sensitivity import (DEFAULT_STEPS, check_steps, plot_sensitivity, sensitivity_sweep,
                                     sparsities_for_drop)

    steps = check_steps(_steps(args.steps) if args.steps else DEFAULT_STEPS)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    plot, = check_outputs(args, args.plot)
    model, meta = load_model(args.checkpoint)
    data = load_dataset(args.dataset or meta.get("info", {}).get("dataset") or "fashion-mnist", args.data_dir)
    result = sensitivity_sweep(model, data, steps=steps, layers=layers, device=args.device, progress=not args.quiet)
    suggested = sparsities_for_drop(result, args.max_drop)
    if plot is not None:
        plot_sensitivity(result, plot, title=f"{meta['model']} on {data.name}: pruning sensitivity")
    if args.json:
        out = {"input": args.checkpoint, "model": meta["model"], "dataset": data.name, **result.as_dict(),
               "max_drop": args.max_drop, "suggested_sparsity": suggested}
        if plot is not None:
            out["plot"] = str(plot)
        emit_json(out, args.json, force=args.force)
        if args.json == "-":
            return 0
    bn = "; BatchNorm statistics re-estimated at every point" if result.bn_recalibrated else ""
    print(f"{meta['model']} on {data.name}: dense top-1 {result.baseline:.4f}; each layer pruned alone{bn}:")
    print(f"{'sparsity':>10} " + " ".join(f"{n:>9}" for n in result.curves))
    for i, s in enumerate(result.steps):
        print(f"{100 * s:>9.0f}% " + " ".join(f"{result.curves[n][i]:>9.4f}" for n in result.curves))
    print(f"suggested sparsity within {100 * args.max_drop:g} points: "
          + ", ".join(f"{n}={s:g}" for n, s in suggested.items()))
    if plot is not None:
        print(f"plot -> {plot}")
    return 0
