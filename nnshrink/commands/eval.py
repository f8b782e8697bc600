"""``nnshrink eval``: top-1 accuracy of a checkpoint or a compressed archive."""

from __future__ import annotations

from ._common import (add_data_args, add_device_arg, add_force_arg, add_json_arg, add_max_elements_arg, check_outputs,
                      emit_json)


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure test top-1 of a checkpoint or .nsk archive")
    p.add_argument("input", help="checkpoint (.safetensors) or archive (.nsk)")
    add_data_args(p)
    add_device_arg(p)
    add_max_elements_arg(p)
    add_json_arg(p)
    add_force_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import load_dataset
    from ..loading import load_model
    from ..train import evaluate, resolve_device

    device = resolve_device(args.device)
    check_outputs(args)
    model, meta = load_model(args.input, max_elements=args.max_elements)
    data = load_dataset(args.dataset or meta.get("info", {}).get("dataset") or "fashion-mnist", args.data_dir)
    top1 = evaluate(model.to(device), data, device=device)  # refuses data that does not fit
    if args.json:
        emit_json({"input": args.input, "model": meta["model"], "dataset": data.name, "top1": top1,
                   "test_examples": len(data.test_y)}, args.json, force=args.force)
    if args.json != "-":
        print(f"{args.input}: {meta['model']} on {data.name}: top-1 {top1:.4f} ({len(data.test_y)} test images)")
    return 0
