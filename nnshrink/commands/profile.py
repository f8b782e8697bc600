"""``nnshrink profile``: parameters, multiply-adds and bytes per layer of a model."""

from __future__ import annotations

from ._common import add_force_arg, add_json_arg, check_outputs, emit_json


def register(sub) -> None:
    p = sub.add_parser("profile", help="per-layer parameters, multiply-adds and float32 bytes")
    p.add_argument("--model", help="model name")
    p.add_argument("--list", action="store_true", help="list the model names and exit")
    p.add_argument("--width", type=float, default=None, help="width multiplier alpha (MobileNet)")
    p.add_argument("--resolution", type=int, default=None, help="input side in pixels")
    add_json_arg(p)
    add_force_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..arch.profile import format_profile, profile_named
    from ..errors import ConfigError
    from ..models import get_spec, model_names

    check_outputs(args)
    if args.list:
        for name in model_names():
            print(f"{name:<16} {get_spec(name).description}")
        return 0
    if not args.model:
        raise ConfigError("--model NAME is required (or --list)")
    spec = get_spec(args.model)
    overrides = {}
    if args.width is not None:
        if "width" not in spec.defaults:
            raise ConfigError(f"model {args.model!r} has no width multiplier")
        overrides["width"] = args.width
    shape = None
    if args.resolution is not None:
        if args.resolution < 1:
            raise ConfigError(f"resolution must be a positive number of pixels; got {args.resolution}")
        if "resolution" in spec.defaults:
            overrides["resolution"] = args.resolution
        else:
            shape = (spec.input_shape[0], args.resolution, args.resolution)
    prof = profile_named(args.model, shape, **overrides)
    shape = prof.input_shape
    if args.json:
        emit_json({"model": args.model, **overrides, **prof.as_dict()}, args.json, force=args.force)
    if args.json != "-":
        print(format_profile(prof, title=f"{args.model} at input {'x'.join(map(str, shape))}"))
    return 0
