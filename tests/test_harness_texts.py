"""Texts a person reads in one pass: the plan's lines wrap without losing a word, the lines of
``missing-data.md`` are sentences, every column of a report's tables has a legend, and the plan
promises no download that ``--help`` says never happens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gradood.harness.document import COLUMN_LEGEND
from gradood.harness.downloading import missing_line
from gradood.harness.plan import wrapped
from gradood.harness.report import Report
from gradood.protocols.errors import MissingDataset

REPO = Path(__file__).resolve().parents[1]
LONG = (
    "  cifar10   25 rows (Table 6); not run; data: to fetch: CIFAR-10 test, SVHN, LSUN (crop), "
    "Places365, Textures"
)


def test_a_long_plan_line_wraps_at_spaces_and_keeps_every_word():
    lines = wrapped(LONG)
    assert len(lines) == 2 and all(len(line) <= 100 for line in lines)
    assert " ".join(line.strip() for line in lines).split() == LONG.split()
    assert lines[1].startswith(" " * 12 + "Textures")  # under the text, past the name


def test_a_word_longer_than_the_width_is_not_split():
    path = "/a/" + "b" * 120
    assert wrapped(f"  model: {path} missing") == [
        "  model:",
        " " * 12 + path,
        " " * 12 + "missing",
    ]


def test_a_missing_dataset_is_a_sentence_and_the_option_a_sentence_of_its_own(tmp_path):
    problem = MissingDataset(
        "iNaturalist", tmp_path, 0, 10, "images", "not found", "tar -xzf x.tar.gz -C <root>/ood"
    )
    line = missing_line("imagenet", problem, tmp_path, "--download")
    first, second = line.splitlines()
    assert first.endswith("-C <root>/ood.") and second == "  With the harness: run with --download."


def test_every_column_of_a_written_table_has_a_legend(tmp_path):
    table = pd.DataFrame(
        {
            "method": ["knn", "knn"],
            "settings": ["k=5", "k=5"],
            "k": [5.0, 5.0],
            "ood_data": ["noise", "Average"],
            **{metric: [0.5, 0.5] for metric in ("FPR95", "AUROC", "AUPR-IN", "AUPR-OUT")},
            "FPR95TPR": [0.9, 0.9],
            "n_id": [10, 10],
            "n_ood": [10, 10],
        }
    )
    Report(tables={"toy": table}).write(tmp_path)
    text = (tmp_path / "toy.md").read_text()
    header = text.splitlines()[0].strip("| ").split(" | ")
    for column in header:
        assert f"- `{column}`: " in text, column
    assert "not the paper's FPR95" in text and "- `k`: a setting of the detector" in text
    assert set(COLUMN_LEGEND) >= {"FPR95", "FPR95TPR", "AUROC", "ood_data"}


@pytest.mark.skipif(sys.platform == "win32", reason="paths in the plan")
def test_the_plan_offers_no_download_of_imagenet_which_help_says_never_happens(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "checkpoints").mkdir()
    run = subprocess.run(
        [
            sys.executable, "-m", "pytest", "benchmarks/test_paper_tables.py", "-k",
            "Average-GradNorm", "-p", "no:cacheprovider", "--gradood-data-root",
            str(tmp_path / "data"), "--gradood-checkpoint-dir", str(tmp_path / "checkpoints"),
            "--gradood-report-dir", str(tmp_path / "reports"),
        ],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    plan = run.stdout[run.stdout.index("gradood plan") :].split("\n\n")[0]
    assert all(len(line) <= 100 for line in plan.splitlines()), plan
    imagenet = " ".join(plan.split("cifar10")[0].split())
    assert "--download would fetch 4; never ImageNet-1k val" in imagenet, plan
    assert "(no --download)" in imagenet.split("model:")[1]  # its checkpoint is published
    help_text = subprocess.run(
        [sys.executable, "-m", "pytest", "--help"], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert "never ImageNet" in " ".join(help_text.split())
