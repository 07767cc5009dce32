"""Run a notebook headless with parameters, as papermill does, without papermill.

    python -m simulations.notebooks communication_curves results=docs/results/crossdevice \
        figures_dir=docs/figures/crossdevice

Values are TOML scalars (``margin=0.02``, bare words are strings), as in ``simulations.run``.
The overrides go into a cell after the notebook's cell tagged ``parameters``; the notebook
runs from ``notebooks/`` like Jupyter would run it. ``make figures`` draws the committed
figures this way from the committed evidence.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

from simulations.run import parse_overrides

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, timeout: int = 240, **parameters: Any) -> nbformat.NotebookNode:
    """Run ``notebooks/<name>.ipynb`` with ``parameters`` overriding its ``parameters`` cell.

    Returns the executed notebook (outputs included); raises
    :class:`nbclient.exceptions.CellExecutionError` naming the failing cell.
    """
    path = NOTEBOOKS / f"{name}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"no notebook {path}; have {sorted(p.stem for p in NOTEBOOKS.glob('*.ipynb'))}")
    notebook = nbformat.read(path, as_version=4)
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    if not tagged:
        raise ValueError(f"{path} has no cell tagged 'parameters'")
    overrides = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(overrides))
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", help="name under notebooks/, without .ipynb")
    parser.add_argument("parameters", nargs="*", metavar="NAME=VALUE")
    parser.add_argument("--save", default="", help="also write the executed notebook here")
    args = parser.parse_args(argv)
    notebook = execute(args.notebook, **parse_overrides(args.parameters))
    if args.save:
        nbformat.write(notebook, args.save)


if __name__ == "__main__":
    main()
