"""Search speed: the seed's 2018 polyaxonfile, size-capped, with concurrency 1 vs 2, side
by side (alternating rounds, medians); optionally the full, uncapped search's best accuracy.

    python benchmarks/search_bench.py [--rounds 2]              # capped, 1 vs 2
    python benchmarks/search_bench.py --full FILE [--concurrency 2]   # uncapped, best accuracy
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mnistkit.polyaxonfile import read_polyaxonfile
from mnistkit.search import SearchConfig, run_group

SEED = Path(__file__).resolve().parent.parent / "examples" / "polyaxon" / "polyaxonfile_hyperparams.yml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--train-samples", type=int, default=2000)
    ap.add_argument("--full", type=Path, help="run this polyaxonfile uncapped and report the best accuracy")
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    spec = read_polyaxonfile(args.full or SEED)
    with tempfile.TemporaryDirectory() as out:
        if args.full:
            t0 = time.perf_counter()
            r = run_group(spec, SearchConfig(output_dir=out, group_name="full", concurrency=args.concurrency))
            best = r.best
            print(
                f"{args.full.name}: {len(r.trials)} trials, concurrency {args.concurrency}, {time.perf_counter() - t0:.0f}s"
            )
            print(f"best {best.name}: accuracy {100 * best.metrics['test_accuracy']:.2f}% with {best.params}")
            return
        times: dict[int, list[float]] = {1: [], 2: []}
        for i in range(args.rounds):
            for c in (1, 2):
                t0 = time.perf_counter()
                run_group(
                    spec,
                    SearchConfig(
                        output_dir=out,
                        group_name=f"c{c}-{i}",
                        concurrency=c,
                        train_samples=args.train_samples,
                        test_samples=2000,
                        max_epochs=1,
                    ),
                )
                times[c].append(time.perf_counter() - t0)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"seed polyaxonfile, 10 trials capped at {args.train_samples} images x 1 epoch (2,000 test images)")
    print(f"concurrency 1: {', '.join(f'{t:.1f}' for t in times[1])} s  median {one:.1f}s")
    print(f"concurrency 2: {', '.join(f'{t:.1f}' for t in times[2])} s  median {two:.1f}s")
    print(f"ratio 2/1: {two / one:.2f}  (target <= 0.7)")


if __name__ == "__main__":
    main()
