"""Mutation fuzzing of the .nsk reader: >= 100,000 mutated archives, each must decode to a
consistent archive or raise a FormatError (never another exception, a hang or a giant
allocation). Mutations: bit flips, byte overwrites, truncation/extension, splices from
other archives, huge header lengths, header field edits and payload edits with their
checksums recomputed (so they reach the deep checks). Then the decompression-bomb family
(filler streams claiming up to 2 billion elements, absurd shapes, 100,000 records). Every
case must finish within 10 s, and the process's peak RSS must stay under --max-rss-mb
(default 768 MB, of which ~160 MB is Python + numpy + torch at import). See
nnshrink/format/fuzz.py.

    python benchmarks/fuzz_archive.py --cases 100000 --json OUT.json   (--quick: 2,000)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time

from nnshrink.format.fuzz import run_bombs, run_fuzz, sample_archives

MAX_CASE_S = 10.0


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2,000 cases")
    ap.add_argument("--json", default=None)
    ap.add_argument("--max-rss-mb", type=float, default=768.0, help="peak RSS bound of the whole run")
    args = ap.parse_args(argv)
    cases = 2000 if args.quick else args.cases
    with tempfile.TemporaryDirectory() as d:
        archives = sample_archives(d)
    rss_at_start = _peak_rss()
    t0 = time.perf_counter()
    res = run_fuzz(cases, args.seed, archives)
    res["wall_s"] = time.perf_counter() - t0
    bombs = run_bombs(MAX_CASE_S)
    res["bombs"] = bombs["bombs"]
    res["failures"] += bombs["failures"]
    if res["max_case_s"] > MAX_CASE_S:
        res["failures"].append({"case": "slowest mutation", "problem": f"took {res['max_case_s']:.1f} s"})
    res["rss_at_start_bytes"] = rss_at_start
    res["peak_rss_bytes"] = _peak_rss()
    res["max_rss_bytes"] = int(args.max_rss_mb * 1e6)
    if res["peak_rss_bytes"] > res["max_rss_bytes"]:
        res["failures"].append({"case": "peak RSS", "problem": f"{res['peak_rss_bytes'] / 1e6:.0f} MB > "
                                                               f"{args.max_rss_mb:.0f} MB"})
    res["archive_sizes"] = [len(a) for a in archives]
    print(f"{cases} mutated archives in {res['wall_s']:.1f} s: {len(res['failures'])} failures, "
          f"{res['accepted_valid']} still valid, slowest case {1000 * res['max_case_s']:.1f} ms, "
          f"peak RSS {res['peak_rss_bytes'] / 1e6:.0f} MB (bound {args.max_rss_mb:.0f} MB)")
    for b in res["bombs"]:
        print(f"  bomb: {b['case']}: {b['file_bytes']} bytes -> {b['outcome']} in {b['s']:.3f} s")
    for f in res["failures"][:10]:
        print("  FAIL", f["case"], f["problem"][:200])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
