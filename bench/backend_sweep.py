"""Every onnx backend node test case through ``cleanup``; prints the counts and every failure.

    python bench/backend_sweep.py [--jobs 2] [--stride 1] [--unvalidated-only] [--show-skipped]
    python bench/backend_sweep.py --simplify [--no-inputs] [--jobs 2] [--stride 1]

``--simplify`` runs the default pipeline (``simplify``) instead, validated on each case's own
inputs, and counts simplify's status (applied / no change / rolled back / failed), listing every
case it did not complete with the reason; ``--no-inputs`` validates on the random samples a run
with no options builds instead (cases whose original rejects them are counted apart).

Each case onnxruntime runs correctly goes through cleanup twice: ``validate=False`` with the
outputs compared here bit for bit, and with onnxslim's validation fed the case's inputs (which
must measure zero drift). ``--unvalidated-only`` skips the second (about 6x faster).

Exit status 1 if any case that onnxruntime runs on the original breaks after cleanup.
"""

from __future__ import annotations

import argparse
import collections
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import test_backend_nodes as sweep  # noqa: E402


def _check(job: tuple[int, bool]) -> sweep.Outcome:
    index, validated = job
    return sweep.check_case(sweep.all_cases()[index], validated=validated)


def _check_simplify(job: tuple[int, bool]) -> sweep.Outcome:
    index, own_inputs = job
    return sweep.check_simplify(sweep.all_cases()[index], own_inputs)


def simplify_sweep(args) -> int:
    logging.disable(logging.WARNING)  # onnx-ir's "Skipped deduplication ..." lines, hundreds of them
    start = time.perf_counter()
    jobs = [(i, not args.no_inputs) for i in range(0, len(sweep.all_cases()), args.stride)]
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        outcomes = pool.map(_check_simplify, jobs, chunksize=4)
    seconds = time.perf_counter() - start
    counts = collections.Counter(o.status for o in outcomes)
    ran = [o for o in outcomes if o.status == sweep.PASS]
    statuses = collections.Counter(o.detail.split(":")[0] for o in ran)
    print(f"cases checked                          {len(outcomes):5d}  (of {len(sweep.all_cases())}, stride {args.stride})")
    print(f"  onnxruntime cannot run the original  {counts[sweep.ORT_CANNOT_RUN]:5d}")
    print(f"  onnxruntime differs from expected    {counts[sweep.ORT_MISMATCH]:5d}")
    print(f"  skipped by onnx-ir (unchanged)       {counts[sweep.SKIP_IR]:5d}")
    if args.no_inputs:
        print(f"  needs data (random samples rejected) {counts[sweep.NO_SAMPLES]:5d}  (exit 1 or 2, saying: give --inputs)")
    print(f"  validated simplify runs              {len(ran):5d}  (outputs within the case's tolerance)")
    for status in ("applied", "no change", "rolled back", "failed"):
        print(f"    {status:<34} {statuses[status]:5d}")
    print(f"  FAILED (raised, broken or drifted)   {counts[sweep.FAIL]:5d}")
    print(f"wall time {seconds:.1f} s with {args.jobs} processes")
    for o in outcomes:
        if o.status == sweep.FAIL or (o.status == sweep.PASS and o.detail.split(":")[0] in ("rolled back", "failed")):
            print(f"  {o.status if o.status == sweep.FAIL else o.detail.split(':')[0]}: {o.name}: {o.detail}")
    return 1 if counts[sweep.FAIL] else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stride", type=int, default=1, help="check every Nth case (1: all)")
    parser.add_argument("--unvalidated-only", action="store_true", help="skip the validated second run")
    parser.add_argument("--show-skipped", action="store_true", help="list the cases onnx-ir cannot load")
    parser.add_argument("--simplify", action="store_true", help="the default pipeline (simplify), validated on each case's inputs")
    parser.add_argument("--no-inputs", action="store_true", help="with --simplify: validate on the samples a run with no options builds")
    args = parser.parse_args()
    if args.simplify:
        return simplify_sweep(args)

    start = time.perf_counter()
    jobs = [(i, not args.unvalidated_only) for i in range(0, len(sweep.all_cases()), args.stride)]
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        outcomes = pool.map(_check, jobs, chunksize=8)
    seconds = time.perf_counter() - start

    counts = collections.Counter(o.status for o in outcomes)
    ort_runs = counts[sweep.PASS] + counts[sweep.SKIP_IR] + counts[sweep.FAIL]
    print(f"cases checked                          {len(outcomes):5d}  (of {len(sweep.all_cases())}, stride {args.stride})")
    print(f"  onnxruntime cannot run the original  {counts[sweep.ORT_CANNOT_RUN]:5d}")
    print(f"  onnxruntime differs from expected    {counts[sweep.ORT_MISMATCH]:5d}")
    print(f"  onnxruntime runs original correctly  {ort_runs:5d}")
    print(f"    identical after cleanup            {counts[sweep.PASS]:5d}" + ("" if args.unvalidated_only else "  (and zero drift under validation)"))
    print(f"      of which cleanup changed graph   {sum(o.status == sweep.PASS and o.detail == 'applied' for o in outcomes):5d}")
    print(f"    skipped by onnx-ir (unchanged)     {counts[sweep.SKIP_IR]:5d}")
    print(f"    FAILED                             {counts[sweep.FAIL]:5d}")
    print(f"wall time {seconds:.1f} s with {args.jobs} processes")
    for o in outcomes:
        if o.status == sweep.FAIL or (args.show_skipped and o.status == sweep.SKIP_IR):
            print(f"  {o.status}: {o.name}: {o.detail}")
    return 1 if counts[sweep.FAIL] else 0


if __name__ == "__main__":
    sys.exit(main())
