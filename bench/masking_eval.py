"""Per-entity precision, recall and F2 of the built-in detectors on the labelled set.

    uv run python bench/masking_eval.py [--seed N] [--size full|small|tiny]

Matching is exact: a finding counts only if its start, end and entity equal a label's (see
`masking.evaluation`).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from masking.detectors import BUILTIN_DETECTORS
from masking.evaluation import SIZES, evaluate, generate, micro_average


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    args = parser.parse_args()

    started = time.perf_counter()
    samples = generate(args.seed, args.size)
    scores = evaluate(samples, BUILTIN_DETECTORS.values())
    elapsed = time.perf_counter() - started
    characters = sum(len(s.text) for s in samples)
    values = sum(len(s.spans) for s in samples)
    print(
        f"seed {args.seed}, size {args.size}: {len(samples)} documents, {values} labelled values, "
        f"{characters / 1e6:.2f} M characters; exact-span matching; {elapsed:.1f} s"
    )
    print(
        f"{'entity':<16} {'support':>7} {'tp':>6} {'fp':>5} {'fn':>5} "
        f"{'precision':>9} {'recall':>7} {'F2':>7}"
    )
    rows = [*scores.items(), ("overall", micro_average(scores))]
    for entity, s in rows:
        print(
            f"{entity:<16} {s.support:>7} {s.tp:>6} {s.fp:>5} {s.fn:>5} "
            f"{s.precision:>9.4f} {s.recall:>7.4f} {s.f2:>7.4f}"
        )


if __name__ == "__main__":
    main()
