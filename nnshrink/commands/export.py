"""``nnshrink export``: an archive (or checkpoint) as ONNX, decoded and / or in codebook form."""

from __future__ import annotations

from ._common import add_force_arg, add_json_arg, add_max_elements_arg, check_outputs, emit_json


def register(sub) -> None:
    p = sub.add_parser("export", help="write an .nsk archive as ONNX (decoded, or shared weights as codebooks)",
                       description="Write the model an .nsk archive (or nnshrink checkpoint) holds as ONNX. --onnx: "
                       "every weight decoded to float. --onnx-codebook: each shared weight kept as uint8 indices "
                       "plus its float codebook, joined by a Gather node (pruned weights index a 0.0 centroid). "
                       "Each file is run in onnxruntime against PyTorch unless --no-check.")
    p.add_argument("input", help="archive (.nsk) or nnshrink checkpoint of a zoo model, or of your model with "
                   "--model-factory")
    p.add_argument("--onnx", default=None, metavar="OUT.onnx", help="write the decoded model here")
    p.add_argument("--onnx-codebook", default=None, metavar="OUT.onnx",
                   help="write the model with uint8-index + codebook weights here")
    p.add_argument("--model-factory", default=None, metavar="PKG.MOD:FN",
                   help="your code that builds the model INPUT holds: FN() -> nn.Module (as in compress)")
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="one example's shape without the batch axis (needed with --model-factory; a zoo model "
                        "knows its own); the batch axis stays dynamic")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="do not run the files in onnxruntime")
    add_max_elements_arg(p)
    add_json_arg(p)
    add_force_arg(p)
    p.set_defaults(func=run)


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,28,28' -> (1, 28, 28); every side a positive integer."""
    from ..errors import ConfigError

    parts = text.replace("x", ",").split(",")
    if not 1 <= len(parts) <= 6 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise ConfigError(f"--input-shape must be positive integers separated by commas, like 1,28,28; got {text!r}")
    shape = tuple(int(p) for p in parts)
    if min(shape) < 1 or max(shape) > 1 << 16:
        raise ConfigError(f"--input-shape sides must be in 1..65536; got {text!r}")
    return shape


def _factory_model(spec: str):
    import torch.nn as nn

    from ..errors import ConfigError
    from .compress import _call_factory, import_factory

    model = _call_factory(import_factory(spec, "--model-factory"), spec, "--model-factory")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model-factory {spec!r} must return an nn.Module; got {type(model).__name__}")
    return model


def run(args) -> int:
    import sys

    import torch

    from ..errors import ConfigError
    from ..io_utils import check_input_file
    from ..onnx_export import OPSET, check_onnx_available, export_onnx

    if not args.onnx and not args.onnx_codebook:
        raise ConfigError("nothing to write: give --onnx OUT.onnx and / or --onnx-codebook OUT.onnx")
    if args.onnx and args.onnx_codebook and args.onnx == args.onnx_codebook:
        raise ConfigError(f"--onnx and --onnx-codebook name the same file {args.onnx!r}")
    opset = OPSET if args.opset is None else args.opset
    if not 13 <= opset <= 20:
        raise ConfigError(f"--opset must be in 13..20; got {opset}")
    shape = parse_shape(args.input_shape) if args.input_shape else None
    if args.model_factory and shape is None:
        raise ConfigError("--input-shape C,H,W is needed with --model-factory (nnshrink does not know your "
                          "model's input)")
    check_input_file(args.input, ConfigError)
    check_outputs(args, args.onnx, args.onnx_codebook)
    check_onnx_available()
    example = None if shape is None else torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    files = []
    for out, codebook in ((args.onnx, False), (args.onnx_codebook, True)):
        if out:
            model = _factory_model(args.model_factory) if args.model_factory else None
            files.append(export_onnx(args.input, out, codebook=codebook, example_input=example, model=model,
                                     force=args.force, max_elements=args.max_elements, opset=opset,
                                     check=not args.no_check))
    for f in files:
        if f["codebook"] and not f["codebook_tensors"]:
            print(f"warning: {args.input} has no shared weights: {f['output']} stores every weight as float",
                  file=sys.stderr)
    report = {"input": str(args.input), "archive_bytes": files[0]["archive_bytes"], "files": files}
    for f in files:
        report["onnx_codebook_bytes" if f["codebook"] else "onnx_bytes"] = f["onnx_bytes"]
    if args.json:
        emit_json(report, args.json, force=args.force)
    if args.json != "-":
        print_summary(report)
    return 0


def print_summary(report: dict) -> None:
    print(f"{report['input']}: {report['archive_bytes']:,} bytes")
    for f in report["files"]:
        what = (f"{len(f['codebook_tensors'])} shared weights as uint8 indices + codebook" if f["codebook"]
                else "decoded float weights")
        check = "" if f["max_abs_diff"] is None else f"; max |onnxruntime - PyTorch| {f['max_abs_diff']:.2g}"
        print(f"{f['output']}: {f['onnx_bytes']:,} bytes ({what}{check})")
