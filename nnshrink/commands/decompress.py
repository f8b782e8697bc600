"""``nnshrink decompress``: an .nsk archive back to a dense safetensors file."""

from __future__ import annotations

import json

from ._common import add_force_arg, add_max_elements_arg, check_outputs


def register(sub) -> None:
    p = sub.add_parser("decompress", help="decode an .nsk archive to dense safetensors")
    p.add_argument("input", help="archive (.nsk)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    add_force_arg(p)
    add_max_elements_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from safetensors.torch import save_file

    from .. import __version__
    from ..checkpoint import META_CONFIG, META_INFO, META_MODEL, META_VERSION
    from ..format import read_archive
    from ..io_utils import atomic_path

    out, = check_outputs(args, args.output)
    archive = read_archive(args.input, max_elements=args.max_elements)
    state = {k: v.contiguous() for k, v in archive.dense_state().items()}
    meta = {META_VERSION: __version__, "format": "pt"}  # 'format' lets transformers load the file
    if archive.metadata.get("model"):
        info = archive.metadata.get("info")
        meta.update({META_MODEL: archive.metadata["model"],
                     META_CONFIG: json.dumps(archive.metadata.get("config") or {}, sort_keys=True),
                     META_INFO: json.dumps(info if isinstance(info, dict) else {}, sort_keys=True)})
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=meta)
    print(f"{args.input} -> {out}: {len(state)} tensors, {sum(v.numel() for v in state.values())} values")
    return 0
