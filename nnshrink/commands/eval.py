"""``nnshrink eval``: top-1 accuracy of a checkpoint or a compressed archive."""

from __future__ import annotations

from ._common import (add_data_args, add_device_arg, add_force_arg, add_json_arg, add_max_elements_arg, check_outputs,
                      emit_json)


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure test top-1 of a checkpoint or .nsk archive")
    p.add_argument("input", help="checkpoint (.safetensors) or archive (.nsk)")
    add_data_args(p)
    add_device_arg(p)
    p.add_argument("--runtime", choices=("auto", "compressed", "dense"), default="auto",
                   help="run an archive's layers from their encoding (compressed), decoded to torch (dense), or "
                        "each the way the measured rule says is faster (auto, the default)")
    add_max_elements_arg(p)
    add_json_arg(p)
    add_force_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import load_dataset
    from ..loading import load_model
    from ..train import evaluate, resolve_device

    check_outputs(args)
    device = resolve_device(args.device)
    model, meta = load_model(args.input, max_elements=args.max_elements)
    model, runtime = _with_runtime(model, args, device)
    data = load_dataset(args.dataset or meta.get("info", {}).get("dataset") or "fashion-mnist", args.data_dir)
    top1 = evaluate(model.to(device), data, device=device)  # refuses data that does not fit
    layers = getattr(model, "nnshrink_runtime", {})
    if args.json:
        emit_json({"input": args.input, "model": meta["model"], "dataset": data.name, "top1": top1,
                   "test_examples": len(data.test_y), "runtime": runtime, "layers_runtime": layers},
                  args.json, force=args.force)
    if args.json != "-":
        print(f"{args.input}: {meta['model']} on {data.name}: top-1 {top1:.4f} ({len(data.test_y)} test images)")
        if layers:
            print(f"runtime {runtime}: " + ", ".join(f"{k} {v}" for k, v in layers.items()))
    return 0


def _with_runtime(model, args, device):
    """The archive's model run the way ``--runtime`` asks (checkpoints have nothing compressed)."""
    from ..errors import ConfigError
    from ..loading import is_archive

    if args.runtime == "dense" or not is_archive(args.input):
        return model, "dense"
    if device.type != "cpu":
        if args.runtime == "compressed":
            raise ConfigError(f"--runtime compressed runs on CPU only; got --device {device}")
        return model, "dense"
    from ..format import read_archive
    from ..runtime.swap import accelerate

    tensors = read_archive(args.input, max_elements=args.max_elements).tensors
    return accelerate(model, tensors, runtime=args.runtime, inplace=True), args.runtime
