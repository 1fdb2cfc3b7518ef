"""Mutation fuzzing of DICOM CT ingestion at scale.

    python bench/fuzz_ingest.py --cases 5000 --seed 1

Runs the harness of ``tests/fuzz_cases.py`` (one child process, 2 GiB address-space limit,
5 s per case) over numbered cases and prints a summary: outcomes by error type, failures
grouped by signature (with a traceback tail), the slowest case and the child's peak RSS.
Exit status 1 if any case failed.  ``--dump-case ID --out FILE`` writes one case's bytes (a
reproducer); ``--case ID`` runs single cases (numbers, or named specs such as
``nested_sequence:undefined-private@j2k``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _fuzz_cases() -> ModuleType:
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("fuzz_cases")


def _signature(result: dict[str, Any]) -> str:
    f = result["failures"][0]
    message = re.sub(r"\d+", "#", f["message"])[:90]
    return f"{f['kind']} in {f['step'].split('(')[0]}: {f['type']} {message}".strip()


def _print_summary(fc: ModuleType, report: Any, args: argparse.Namespace) -> None:
    results: list[dict[str, Any]] = report.results
    n = len(results)
    rate = n / report.wall_seconds if report.wall_seconds else 0.0
    print(f"fuzz_ingest: {n} cases (seed {args.seed}, start {args.start}), "
          f"{report.wall_seconds:.1f} s wall ({rate:.0f} cases/s), "
          f"{report.restarts} child restart(s)")
    print("\noutcomes:")
    for outcome, count in sorted(report.outcome_counts().items(), key=lambda kv: -kv[1]):
        print(f"  {count:6d}  {outcome}")
    per_mutation: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        per_mutation[r["mutation"]][r["outcome"]] += 1
    print("\nby mutation:")
    for mutation, counts in sorted(per_mutation.items()):
        parts = ", ".join(f"{k} {v}" for k, v in counts.most_common())
        print(f"  {mutation:22s} {sum(counts.values()):5d}  {parts}")
    slowest = report.slowest()
    if slowest is not None:
        print(f"\nmax per-case time: {slowest['seconds']:.3f} s ({slowest['name']}); "
              f"limit {args.timeout:g} s")
    limit_mib = args.mem_gib * 1024
    print(f"peak RSS of the child: {report.children_maxrss_kib / 1024:.1f} MiB "
          f"(RUSAGE_CHILDREN; self-reported {report.child_maxrss_kib / 1024:.1f} MiB); "
          f"address-space limit {limit_mib:.0f} MiB")
    failures: list[dict[str, Any]] = report.failures
    print(f"\nfailures: {len(failures)}")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in failures:
        groups[_signature(r)].append(r)
    for sig, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        print(f"\n  [{len(rs)}x] {sig}")
        for r in rs[:3]:
            print(f"      case {r['id']}: {r['name']}")
        tb = rs[0]["failures"][0].get("traceback", "").strip().splitlines()
        if tb:  # the innermost dicom_io frame and the exception
            frames = [n for n, line in enumerate(tb) if "/dicom_io/" in line]
            shown = tb[frames[-1]:frames[-1] + 2] if frames else []
            print("      " + "\n      ".join([*shown, tb[-1]]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=5000, help="numbered cases to run")
    parser.add_argument("--seed", type=int, default=1, help="run seed (cases depend on it)")
    parser.add_argument("--start", type=int, default=0, help="first case number")
    parser.add_argument("--case", action="append", default=[], metavar="ID",
                        help="run only these case ids (repeatable)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-case hang limit (s)")
    parser.add_argument("--mem-gib", type=float, default=2.0, help="child RLIMIT_AS (GiB)")
    parser.add_argument("--keep", type=Path, help="write the bytes of failing cases here")
    parser.add_argument("--json", type=Path, help="write every case result here (JSON)")
    parser.add_argument("--dump-case", metavar="ID", help="write one case's bytes and exit")
    parser.add_argument("--out", type=Path, help="file for --dump-case")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    fc = _fuzz_cases()
    if args.dump_case is not None:
        if args.out is None:
            parser.error("--dump-case needs --out")
        case = fc.build_case(args.dump_case, args.seed, fc.load_seeds())
        args.out.write_bytes(case.data)
        print(f"{case.name}: {len(case.data)} bytes, oracle {case.oracle.value} -> {args.out}")
        return 0

    def progress(done: int, result: dict[str, Any]) -> None:
        if not args.quiet and done % 500 == 0:
            print(f"  ... {done} cases", file=sys.stderr, flush=True)

    if args.case:
        numbered = [c for c in args.case if c.isdigit()]
        report = fc.run_fuzz(named=[c for c in args.case if not c.isdigit()], seed=args.seed,
                             timeout_s=args.timeout, mem_bytes=int(args.mem_gib * (1 << 30)),
                             keep_dir=args.keep, progress=progress)
        for c in numbered:  # numbered cases one by one, in the order given
            more = fc.run_fuzz(cases=1, start=int(c), seed=args.seed, timeout_s=args.timeout,
                               mem_bytes=int(args.mem_gib * (1 << 30)), keep_dir=args.keep)
            report.results.extend(more.results)
            report.wall_seconds += more.wall_seconds
            report.restarts += more.restarts
            report.child_maxrss_kib = max(report.child_maxrss_kib, more.child_maxrss_kib)
            report.children_maxrss_kib = more.children_maxrss_kib
    else:
        report = fc.run_fuzz(cases=args.cases, seed=args.seed, start=args.start,
                             timeout_s=args.timeout, mem_bytes=int(args.mem_gib * (1 << 30)),
                             keep_dir=args.keep, progress=progress)
    if args.json is not None:
        args.json.write_text(json.dumps(report.results, indent=1))
    _print_summary(fc, report, args)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
