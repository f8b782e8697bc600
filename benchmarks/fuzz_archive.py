"""Mutation fuzzing of the .nsk reader: >= 100,000 mutated archives, each must decode to a
consistent archive or raise a FormatError (never another exception, a hang or a giant
allocation). Mutations: bit flips, byte overwrites, truncation/extension, splices from
other archives, huge header lengths, header field edits and payload edits with their
checksums recomputed (so they reach the deep checks). See nnshrink/format/fuzz.py.

    python benchmarks/fuzz_archive.py --cases 100000 --json OUT.json   (--quick: 2,000)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time

from nnshrink.format.fuzz import run_fuzz, sample_archives


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2,000 cases")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cases = 2000 if args.quick else args.cases
    with tempfile.TemporaryDirectory() as d:
        archives = sample_archives(d)
    t0 = time.perf_counter()
    res = run_fuzz(cases, args.seed, archives)
    res["wall_s"] = time.perf_counter() - t0
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res["archive_sizes"] = [len(a) for a in archives]
    print(f"{cases} mutated archives in {res['wall_s']:.1f} s: {len(res['failures'])} failures, "
          f"{res['accepted_valid']} still valid, slowest case {1000 * res['max_case_s']:.1f} ms, "
          f"peak RSS {res['peak_rss_bytes'] / 1e6:.0f} MB")
    for f in res["failures"][:10]:
        print("  FAIL", f["case"], f["problem"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
