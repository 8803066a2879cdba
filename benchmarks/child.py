"""One measurement per process: a benchmark re-runs itself with ``--child`` so that each
variant's peak memory is its own; the child prints one ``RESULT {json}`` line."""

from __future__ import annotations

import json
import os
import subprocess


def report(result: dict) -> None:
    """In the child: hand the result to the parent."""
    print("RESULT " + json.dumps(result))


def run_child(cmd: list[str], what: str, env: dict | None = None) -> dict:
    """In the parent: run one child and return its result (its output is shown if it fails).
    ``env``: variables to set for the child (``common.child_env``)."""
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1", **(env or {})}
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"{what} failed")
    return json.loads(line[0][len("RESULT ") :])
