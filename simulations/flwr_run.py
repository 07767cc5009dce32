"""``flwr run`` with an exit status: Flower's CLI exits 0 whatever became of the run.

    python -m simulations.flwr_run [APP] [SUPERLINK] [--run-config "key=value ..."]

Starts the run (``flwr run ... --format json``), streams its log until it ends
(``flwr log RUN_ID --stream``), asks for its final status (``flwr list --run-id``) and exits
0 only when it is ``finished:completed``; 1 for a run that failed (a config error, skipped
rounds, an interruption: the ServerApp raises, so Flower records it as failed), 2 when the
run could not even start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path


def _flwr() -> str:
    beside = Path(sys.executable).parent / "flwr"
    return str(beside) if beside.is_file() else (shutil.which("flwr") or "flwr")


def _json(args: list[str]) -> dict:
    done = subprocess.run([_flwr(), *args, "--format", "json"], capture_output=True, text=True, check=False)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"success": False, "error-message": (done.stdout + done.stderr).strip()}


def main(argv: list[str] | None = None) -> int:
    """Run, stream, and return the exit status described in the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app", nargs="?", default=".")
    parser.add_argument("superlink", nargs="?", default=None, help="connection name (default: flwr's default)")
    parser.add_argument("--run-config", "-c", action="append", default=[], help="as for flwr run")
    args = parser.parse_args(argv)
    connection = [args.superlink] if args.superlink else []
    overrides = [item for value in args.run_config for item in ("--run-config", value)]
    started = _json(["run", args.app, *connection, *overrides])
    if not started.get("success") or not started.get("run-id"):
        print(f"the run did not start: {started.get('error-message', started)}", file=sys.stderr)
        return 2
    run_id = str(started["run-id"])
    subprocess.run([_flwr(), "log", run_id, *connection, "--stream"], check=False)
    runs = _json(["list", *connection, "--run-id", run_id]).get("runs", [{}])
    status = str(runs[0].get("status", "unknown")) if runs else "unknown"
    print(f"run {run_id}: {status}")
    return 0 if status == "finished:completed" else 1


if __name__ == "__main__":
    sys.exit(main())
