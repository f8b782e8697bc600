"""Assemble BENCHMARKS.md from the per-topic sections in benchmarks/sections/ (sorted by
name). Each section quotes figures from a benchmarks/ script with the command that made them.

    python benchmarks/build_benchmarks_md.py
"""

from pathlib import Path

HEADER = """# nnshrink benchmarks

Every figure here comes from a script in `benchmarks/`, named with the exact command
beside it. Machine unless a section says otherwise: a 2-core shared x86-64 CPU VM, no GPU,
Python 3.11, torch 2.13.0 (CPU build). Timings are medians of repeats, quoted as ratios
against a baseline measured in the same run; single-threaded unless threading is the point.
This file is generated: edit `benchmarks/sections/*.md` and run
`python benchmarks/build_benchmarks_md.py`.
"""


def main() -> None:
    root = Path(__file__).parent
    parts = [HEADER]
    for sec in sorted((root / "sections").glob("*.md")):
        parts.append(sec.read_text().strip() + "\n")
    (root.parent / "BENCHMARKS.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
