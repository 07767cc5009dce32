"""``python -m bench.savings``: the RESULT line and verdicts read from committed evidence, the
markdown tables, the generated block of README.md and docs/results.md, and that the committed
pages still say what the committed evidence says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.savings import BLOCK_BEGIN, BLOCK_END, SECOND_ARCHITECTURE, SWEEP, status_line
from bench.savings import main as savings_main
from simulations import analysis as an
from simulations.sweep_file import load_sweep


def test_bench_savings_reads_committed_evidence_and_ends_with_the_result_line(
    evidence: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    savings_main(["--no-run", "--evidence", str(evidence)])

    # Assert: FedFish 2% saves 13.5x at alpha 0.5 (goal 50: missed, and said so); nothing ran
    # at alpha 0.1 or from scratch; the random mask never reached the target
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == ("RESULT savings_finetune_alpha0.5=13.5 savings_finetune_alpha0.1=nan "
                         "savings_scratch_alpha0.5=nan fish_vs_random_finetune=inf")
    verdict = next(line for line in lines if line.startswith("savings_finetune_alpha0.5:"))
    assert "fedfish 2%: 13.5x" in verdict and verdict.endswith("goal >= 50: missed")

def test_bench_savings_says_plainly_when_no_fedfish_setting_reached_the_target(
    evidence: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: FedFish seed 1 stops at round 2, below the target
    short = evidence / "crossdevice" / "seed1_finetune_fedfish" / "rounds.csv"
    pd.read_csv(short).head(3).to_csv(short, index=False)

    # Execute
    savings_main(["--no-run", "--evidence", str(evidence)])

    # Assert: no savings figure, and the line names the closest setting and where it ended
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("RESULT savings_finetune_alpha0.5=nan ")
    verdict = next(line for line in lines if line.startswith("savings_finetune_alpha0.5:"))
    assert "fedfish 2% (the closest FedFish setting): target " in verdict and "not reached, final " in verdict
    assert "nan" not in verdict and verdict.endswith("goal >= 50: missed: reached in 1 of 2 seeds")

def test_bench_savings_markdown_tables_show_each_method_with_its_savings(
    evidence: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    savings_main(["--no-run", "--evidence", str(evidence), "--markdown"])

    # Assert: one table for the one group, a row per method, FedAvg at 1x and FedFish 2% at 13.5x
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("**finetune, alpha 0.5** (target ") for line in lines) == 1
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ") and "---" not in line}
    assert "| 1.0x |" in rows["fedavg"]
    assert "| 13.5x" in rows["fedfish 2%"]
    assert "| - |" in rows["random-fixed 2%"]

def test_update_docs_rewrites_only_the_marked_block_and_is_idempotent(
    evidence: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a page with prose around an outdated block
    page = tmp_path / "results.md"
    page.write_text(f"intro\n\n{BLOCK_BEGIN}\nold numbers\n{BLOCK_END}\n\nprose after\n")

    # Execute
    savings_main(["--no-run", "--evidence", str(evidence), "--update-docs", str(page)])
    first = page.read_text()
    result = capsys.readouterr().out.strip().splitlines()[-1]
    savings_main(["--no-run", "--evidence", str(evidence), "--update-docs", str(page)])

    # Assert: the prose stays, the old numbers are gone, the block holds the printed RESULT line
    # and the tables, and a second run changes nothing
    assert first.startswith(f"intro\n\n{BLOCK_BEGIN}\n**Finished and committed: `crossdevice` 0 of 132 points")
    assert first.endswith(f"{BLOCK_END}\n\nprose after\n") and "old numbers" not in first
    assert "```text\n" in first and f"\n{result}\n```\n" in first
    assert "| fedfish 2% | 2 |" in first and "| 13.5x" in first
    assert page.read_text() == first

def test_update_docs_refuses_a_page_without_its_markers(evidence: Path, tmp_path: Path) -> None:
    # Prepare: one page without markers, one with the end marker first
    pages = {tmp_path / "none.md": "no block here\n",
             tmp_path / "reversed.md": f"{BLOCK_END}\nx\n{BLOCK_BEGIN}\n"}
    for page, text in pages.items():
        page.write_text(text)

    # Execute / Assert: a clear error naming the page, and the page untouched
    for page, text in pages.items():
        with pytest.raises(ValueError, match=f"{page.name}: needs one '<!-- savings:begin -->' line"):
            savings_main(["--no-run", "--evidence", str(evidence), "--update-docs", str(page)])
        assert page.read_text() == text

def test_status_line_counts_the_committed_points_of_each_group(tmp_path: Path) -> None:
    # Prepare: two finished points and one still running, as committed evidence
    sweeps = [load_sweep(SWEEP, tmp_path), load_sweep(SECOND_ARCHITECTURE, tmp_path)]
    for name, status in [("alpha0.1_finetune_seed0_fedavg", "done"), ("alpha0.5_scratch_seed2_fedavg", "done"),
                         ("alpha0.1_finetune_seed1_fedavg", "running")]:
        (tmp_path / "crossdevice" / name).mkdir(parents=True)
        (tmp_path / "crossdevice" / name / an.POINT_FILE).write_text(json.dumps({"status": status}))

    # Execute
    line = status_line(sweeps, tmp_path)

    # Assert: counted per (scenario, alpha) group of 33, the running point not counted
    assert line == ("**Finished and committed: `crossdevice` 2 of 132 points (finetune, alpha 0.5: 0 of 33; "
                    "scratch, alpha 0.5: 1 of 33; finetune, alpha 0.1: 1 of 33; scratch, alpha 0.1: 0 of 33), "
                    "`crossdevice_resnet` 0 of 9 points (finetune, alpha 0.5: 0 of 9).**")

def test_second_architecture_gets_its_table_and_verdict_line(
    evidence: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the same hand-made runs as the second architecture's evidence
    shutil.copytree(evidence / "crossdevice", evidence / "crossdevice_resnet")

    # Execute
    savings_main(["--no-run", "--evidence", str(evidence), "--markdown"])

    # Assert: its own table and a verdict line, and RESULT keeps its four figures
    out = capsys.readouterr().out
    assert "Second architecture, `small-resnet` (`simulations/sweeps/crossdevice_resnet.toml`):" in out
    verdict = next(line for line in out.splitlines() if line.startswith("second_architecture: "))
    assert verdict.startswith("second_architecture: small-resnet, finetune alpha 0.5: fedfish 2%: 13.5x")
    assert out.strip().splitlines()[-1].count("=") == 4

def test_committed_docs_show_what_the_committed_evidence_says(tmp_path: Path) -> None:
    # Prepare: copies of the two pages that carry the generated block
    root = Path(__file__).resolve().parents[2]
    pages = [tmp_path / "README.md", tmp_path / "results.md"]
    for page, source in zip(pages, [root / "README.md", root / "docs" / "results.md"], strict=True):
        shutil.copy(source, page)

    # Execute: regenerate them from docs/results/
    savings_main(["--no-run", "--evidence", str(root / "docs" / "results"), "--update-docs", *map(str, pages)])

    # Assert: nothing changed (else run: python -m bench.savings --no-run --update-docs README.md docs/results.md)
    assert pages[0].read_text() == (root / "README.md").read_text()
    assert pages[1].read_text() == (root / "docs" / "results.md").read_text()
