"""Summaries of the collapsed stacks that `gateway_bench --profile DIR` records with py-spy.

    uv run python -m bench.stacks DIR/postgres-modern-c32-r1.txt [--top 25]

py-spy samples every thread that is not idle (running Python, or in a system call it
does not recognise as waiting), so a share of samples approximates a share of the
process's CPU, with the GIL waits of the worker threads counted in; --busy leaves out the
samples whose leaf frame is a known wait (the event loop's select, an idle executor
thread, psycopg waiting for Postgres). Printed:

- the share of samples on the event-loop thread and on the executor's worker threads;
- the steps of the data path (inclusive: a frame's share with everything it calls), each
  recognised by a frame of the project or of a library;
- the frames with the most samples of their own, each with the nearest project frame
  that led to it, which says who pays for the library code.
"""

import argparse
import re
from collections import Counter
from pathlib import Path

# Leaf frames where a thread waits (for the network, Postgres, work or a lock) rather than
# computes; py-spy does not always recognise them as idle.
WAITING = re.compile(
    r"^(?:EpollSelector\.select|_worker \(concurrent/futures/thread\.py:89\)|"
    r"Connection\.wait \(psycopg/|wait \(psycopg/|Condition\.wait|Event\.wait|"
    r"_PollLikeSelector\.select|untilConcludes)"
)
PROJECT = re.compile(r"\((?:gateway|audit|masking|approvals|mcpgw|console)/[^)]*\)")

# (label, regular expression on one frame): the first match in a stack, from the root.
STEPS = (
    ("authenticate (token lookup)", r"^_lookup \(gateway/auth\.py"),
    ("load connection", r"^_connection \(gateway/store\.py"),
    ("grants (policy.may_use)", r"^may_use \(approvals/policy\.py"),
    ("legacy session lookup", r"^_get_session \(gateway/store\.py"),
    ("maskers for the call", r"^<lambda> \(gateway/pipeline\.py"),
    ("tool catalog view", r"^view \(gateway/catalog\.py"),
    ("policy evaluate (50 rules)", r"^evaluate \(approvals/policy\.py"),
    ("audit append (chain.append)", r"^append \(audit/chain\.py"),
    ("audit append (the writer on the event loop)", r"^PostgresChain\._append_many \(audit/"),
    ("audit: _stored_result (mask, canonical, sha256)", r"^_stored_result \(audit/recorder\.py"),
    ("audit: redact() of arguments and result", r"^redact \(audit/recorder\.py"),
    ("mask for the agent", r"^mask \(gateway/pipeline\.py"),
    ("upstream request", r"^Upstream\.send \(gateway/upstream\.py"),
    ("upstream body read + json.loads", r"^Reply\.read_message \(gateway/upstream\.py"),
    ("response JSON to agent (dumps)", r"^Exchange\.respond_json \(gateway/endpoint\.py"),
    ("request parse (jsonrpc.parse)", r"^parse \(gateway/jsonrpc\.py"),
    ("uvicorn HTTP (outside the app)", r"^HttpToolsProtocol\."),
    ("thread pool hand-off (submit)", r"^ThreadPoolExecutor\.submit "),
    ("worker waiting for work or the GIL", r"^_worker \(concurrent/futures/thread\.py:89\)"),
)


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarize(stacks: list[tuple[list[str], int]], top: int, busy: bool = False) -> list[str]:
    if busy:
        stacks = [(frames, count) for frames, count in stacks if not WAITING.search(frames[-1])]
    total = sum(count for _frames, count in stacks) or 1
    out = [f"{total:,} samples" + (" (waiting leaf frames left out)" if busy else "")]
    workers = sum(c for frames, c in stacks if any("Thread._bootstrap" in f for f in frames[:3]))
    out.append(
        f"event-loop thread {1 - workers / total:6.1%}   executor threads {workers / total:6.1%}"
    )
    out.append("\nsteps (inclusive share of samples):")
    compiled = [(label, re.compile(pattern)) for label, pattern in STEPS]
    steps: Counter[str] = Counter()
    for frames, count in stacks:
        seen = set()
        for frame in frames:
            for label, pattern in compiled:
                if label not in seen and pattern.search(frame):
                    seen.add(label)
                    steps[label] += count
    for label, _pattern in STEPS:
        if steps[label]:
            out.append(f"  {steps[label] / total:6.1%}  {label}")
    out.append("\nown samples (nearest project frame):")
    own: Counter[tuple[str, str]] = Counter()
    for frames, count in stacks:
        nearest = next((f for f in reversed(frames) if PROJECT.search(f)), "-")
        own[(frames[-1], nearest)] += count
    for (frame, nearest), count in own.most_common(top):
        out.append(f"  {count / total:6.1%}  {frame}  <- {nearest}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--busy",
        action="store_true",
        help="leave out samples whose leaf frame waits (select, queue, Postgres answer)",
    )
    options = parser.parse_args()
    for path in options.files:
        print(f"== {path.name}")
        for line in summarize(load(path), options.top, options.busy):
            print(line)
        print()


if __name__ == "__main__":
    main()
