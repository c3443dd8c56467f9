"""Scan time of all built-in detectors on realistic tool results of 1 KB to 1 MB.

    uv run python bench/masking_speed.py [--seed N] [--runs-scale F]

The texts are `masking.evaluation.realistic_text`: log lines, JSON records, query results
and prose full of timestamps, ids, versions and amounts, about a fifth of the pieces
carrying sensitive values. Each size has up to 20 distinct texts, scanned in turn, after one
warm-up pass over the evaluation set (which loads the numbering plans a long-running gateway
would already have). Times are CPU time of this process (`time.process_time_ns`), which
other load on the machine inflates less than wall time; the wall-clock p95 is printed beside
it, and so are the load average and a calibration figure (`str.lower()` over 1 MB) to judge
how busy the machine was.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from masking.detectors import BUILTIN_DETECTORS, scan
from masking.evaluation import generate, realistic_text

# (bytes, label, runs)
SIZES = (
    (1024, "1 KB", 2000),
    (10 * 1024, "10 KB", 600),
    (100 * 1024, "100 KB", 60),
    (1024 * 1024, "1 MB", 10),
)
DISTINCT_TEXTS = 20


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _calibration_us() -> float:
    text = "Abc 123 " * (1024 * 128)
    runs = [0.0] * 5
    for i in range(5):
        start = time.process_time_ns()
        text.lower()
        runs[i] = (time.process_time_ns() - start) / 1000
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--runs-scale", type=float, default=1.0)
    args = parser.parse_args()
    rules = list(BUILTIN_DETECTORS.values())
    for sample in generate(args.seed, size="tiny"):
        scan(sample.text, rules)

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"scan() with all {len(rules)} built-in detectors; seed {args.seed}; "
        f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; load average {load}; "
        f"calibration: str.lower() of 1 MB = {_calibration_us():.0f} µs"
    )
    print(
        f"{'size':>7} {'runs':>5} {'found':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
        f"{'wall p95':>9} {'µs/KB p50':>10}"
    )
    for size, label, runs in SIZES:
        runs = max(3, int(runs * args.runs_scale))
        texts = [realistic_text(size, seed=args.seed + i) for i in range(min(DISTINCT_TEXTS, runs))]
        cpu: list[float] = []
        wall: list[float] = []
        findings = 0
        for run in range(runs):
            text = texts[run % len(texts)]
            wall_start, cpu_start = time.perf_counter_ns(), time.process_time_ns()
            found = scan(text, rules)
            cpu.append((time.process_time_ns() - cpu_start) / 1e6)
            wall.append((time.perf_counter_ns() - wall_start) / 1e6)
            findings += len(found)
        p50 = statistics.median(cpu)
        print(
            f"{label:>7} {runs:>5} {findings / runs:>7.1f} {p50:>8.3f} "
            f"{_percentile(cpu, 0.95):>8.3f} {max(cpu):>8.3f} {_percentile(wall, 0.95):>9.3f} "
            f"{p50 * 1000 / (size / 1024):>10.1f}"
        )


if __name__ == "__main__":
    main()
