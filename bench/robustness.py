"""One hostile client among ten: accuracy with the default defences, and what they cost.

    python -m bench.robustness [--clients 10] [--rounds 8] [--examples 200]

In-process runs (``simulations.inprocess``: real messages and ClientApp, no Ray) of FedFish
5% with the clients' Fisher on non-IID Fashion-MNIST, every client in every round. One node
(partition 2) lies as each kind of ``simulations.attacks`` says. Each run's accuracy is the
mean over its last 3 rounds on 2,000 test images.

Columns: the run with the defaults; the same run with the configurable defences off
(``update-norm-factor=0``, ``robust-calibration=false``; the identity and shard-size checks
are always on); and the rejected replies with the defaults. The honest row's difference is
what the defences cost when nobody attacks. The last line is::

    RESULT honest=<acc> honest_undefended=<acc> defence_cost=<undefended - defaults> worst_attacked=<acc>
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from simulations import client_app
from simulations.attacks import ATTACKS, hostile
from simulations.config import RunConfig
from simulations.inprocess import run_in_process

ATTACKER = 2
FINAL_ROUNDS = 3
ALWAYS_ON = ("inflated-count", "stolen-identity")


def _accuracy(run_dir: Path) -> tuple[float, int]:
    """Mean accuracy of the last rounds, and the replies rejected over the run."""
    rounds = pd.read_csv(run_dir / "rounds.csv")
    return float(rounds["accuracy"].tail(FINAL_ROUNDS).mean()), int(rounds["clients_rejected"].sum())


def main(argv: list[str] | None = None) -> None:
    """Run every row and print the table and the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--examples", type=int, default=200)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = RunConfig(
            num_partitions=args.clients, samples_per_client=args.examples, num_server_rounds=args.rounds,
            density=0.05, fisher_samples=64, eval_samples=2000, momentum=0.9, seed=0, results_dir=tmp,
            client_state_dir="off",
        )
        undefended = {"update_norm_factor": 0.0, "robust_calibration": False}
        for kind in ("honest", *ATTACKS):
            handler = None if kind == "honest" else hostile(client_app.app, ATTACKER, kind)
            accuracy, rejected = _accuracy(run_in_process(base.replace(run_name=f"{kind}-defaults"), handler))
            open_accuracy = float("nan")
            if kind not in ALWAYS_ON:
                open_accuracy, _ = _accuracy(run_in_process(base.replace(run_name=f"{kind}-open", **undefended), handler))
            rows.append({"run": kind, "accuracy (defaults)": accuracy, "accuracy (defences off)": open_accuracy,
                         "rejected replies (defaults)": rejected})
            print(f"{kind}: {accuracy:.4f} with the defaults, {open_accuracy:.4f} without", flush=True)
    table = pd.DataFrame(rows).set_index("run")
    print()
    print("| run | " + " | ".join(table.columns) + " |")
    print("|---" * (len(table.columns) + 1) + "|")
    for name, row in table.iterrows():
        # A row is one Series, so its counts come back as floats; NaN: that defence cannot be turned off.
        undefended = row["accuracy (defences off)"]
        cells = [f"{row['accuracy (defaults)']:.4f}",
                 "always on" if pd.isna(undefended) else f"{undefended:.4f}",
                 str(int(row["rejected replies (defaults)"]))]
        print(f"| {name} | " + " | ".join(cells) + " |")
    honest = table.loc["honest"]
    worst = table.loc[list(ATTACKS), "accuracy (defaults)"].min()
    print("RESULT "
          f"honest={honest['accuracy (defaults)']:.4f} honest_undefended={honest['accuracy (defences off)']:.4f} "
          f"defence_cost={honest['accuracy (defences off)'] - honest['accuracy (defaults)']:.4f} "
          f"worst_attacked={worst:.4f}")


if __name__ == "__main__":
    main()
