"""The fault suite's figures as the table of docs/reliability.md.

Runs `tests/faults/` (each fault test records what it saw: runs acknowledged, lost, duplicated, the API's
answers, the recovery time) and prints one Markdown row per test, `--repeat` times each.

    python bench/faults.py [--repeat 3] [-k postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COLUMNS = ("fault", "load", "acknowledged", "lost", "duplicated", "answers", "recovery_s")
HEADER = (
    "| fault | load | runs acknowledged | lost | duplicated | API answers seen | recovery |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def row(figures: dict[str, object]) -> str:
    answers = (
        str(figures["answers"])
        .replace("x 202", "x 202 started")
        .replace("x 503", "x 503 + Retry-After")
    )
    slowest = figures.get("slowest_answer_s")
    if slowest is not None:
        answers += (
            f" (slowest {slowest} s; {figures.get('tracebacks_in_log', 0)} tracebacks logged)"
        )
    detail = figures.get("detail")  # the bombs and the hanging webhook: what else was seen
    if detail:
        answers += f"; {detail}"
    recovery = figures.get("recovery") or f"ready again {figures['recovery_s']} s after"
    return (
        f"| {figures['fault']} | {figures['load']} | {figures['acknowledged']} | {figures['lost']} "
        f"| {figures['duplicated']} | {answers} | {recovery} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("-k", default=None, help="pytest -k expression")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "figures.jsonl"
        env = {**os.environ, "LEGATO_FAULT_FIGURES": str(target)}
        for _ in range(args.repeat):
            command = [
                sys.executable,
                "-m",
                "pytest",
                "tests/faults",
                "-q",
                "-p",
                "no:cacheprovider",
            ]
            if args.k:
                command += ["-k", args.k]
            subprocess.run(command, cwd=root, env=env, check=False)
        rows = (
            [json.loads(line) for line in target.read_text().splitlines()]
            if target.exists()
            else []
        )
    print(HEADER)
    for figures in rows:
        print(row(figures))


if __name__ == "__main__":
    main()
