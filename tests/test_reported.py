"""The paper's reported numbers: every transcribed cell against the paper's own text, parsed
here from its printed layout, plus invariants that catch slips, dtypes and errors."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from gradood import reported
from gradood.detectors.gradnorm import PAPER_NORMS, PAPER_TEMPERATURES

PAPER_DIR_VARIABLE = "GRADOOD_PAPER_DIR"
REPOSITORY = Path(__file__).resolve().parents[1]
IMAGENET_OOD = ["iNaturalist", "SUN", "Places", "Textures"]
CIFAR_OOD = ["SVHN", "LSUN-crop", "Places365", "Textures"]
NUMBER = re.compile(r"\d{1,3}\.\d{2}")  # every printed FPR95 / AUROC: percent, two decimals
ARROWS = {"FPR95": "↓", "AUROC": "↑"}  # the printed direction of "better"
NAN = math.nan
# (p, T) of each method, from the paper: appendix B.2 (ODIN T = 1000 in all experiments; MSP
# and Energy use the plain softmax / logsumexp, T = 1), GradNorm's default L1 and T = 1.
# Mahalanobis and Lee & AlRegib have neither a norm order nor a temperature.
SETTINGS = {
    "MSP": (NAN, 1.0),
    "ODIN": (NAN, 1000.0),
    "Energy": (NAN, 1.0),
    "Mahalanobis": (NAN, NAN),
    "GradNorm": (1.0, 1.0),
    "Lee-AlRegib": (NAN, NAN),
}
ROW_COUNTS = {"table1": 25, "table6": 50, "table7": 50, "table8": 75, "table9": 10}


# ---- the paper's files ----------------------------------------------------------------------


#: what each paper file holds, as the parsers below read it
PAPER_FILES = {
    "PROTOCOL.md": "notes on the GradNorm paper (arXiv 2110.00218) with its Table 1 as a "
    "Markdown table under '### Table 1'",
    "supplementary.txt": "the paper's supplementary material as plain text (its Tables 6 to 9 "
    "tab-separated, as a PDF-to-text copy prints them)",
}


def paper_file(name: str) -> str:
    """The text of one paper file from $GRADOOD_PAPER_DIR, else <repo>/../shared/paper/ (the
    project's own checkout keeps them there); a skip saying what to provide and how, if absent."""
    given = os.environ.get(PAPER_DIR_VARIABLE)
    folder = Path(given or REPOSITORY.parent / "shared" / "paper")
    path = folder / name
    if not path.is_file():
        where = f"{PAPER_DIR_VARIABLE}={given}" if given else f"{PAPER_DIR_VARIABLE} is not set"
        pytest.skip(
            f"needs the paper's text, not shipped with gradood: {name}, {PAPER_FILES[name]}; "
            f"not found at {path} ({where}). To run these checks, put PROTOCOL.md and "
            f"supplementary.txt in one folder and run {PAPER_DIR_VARIABLE}=<that folder> "
            "pytest tests/test_reported.py"
        )
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def protocol() -> str:
    return paper_file("PROTOCOL.md")


@pytest.fixture(scope="module")
def supplementary() -> str:
    return paper_file("supplementary.txt")


@pytest.mark.parametrize("name", sorted(PAPER_FILES))
def test_a_missing_paper_file_says_what_to_provide_and_how(name, tmp_path, monkeypatch):
    monkeypatch.setenv(PAPER_DIR_VARIABLE, str(tmp_path))
    with pytest.raises(pytest.skip.Exception) as skipped:
        paper_file(name)
    message = str(skipped.value)
    assert f"{name}, {PAPER_FILES[name]}" in message
    assert f"not found at {tmp_path / name} ({PAPER_DIR_VARIABLE}={tmp_path})" in message
    assert f"run {PAPER_DIR_VARIABLE}=<that folder> pytest tests/test_reported.py" in message


# ---- an independent parser of the printed layouts -------------------------------------------


def method_name(label: str) -> str:
    """Canonical method name of a printed label: citation and "(ours)" dropped."""
    bare = re.sub(r"\s*(\[\d+\]|\(ours\))$", "", label)
    return {"Lee and AlRegib": "Lee-AlRegib"}.get(bare, bare)


def dataset_name(label: str) -> str:
    return {"LSUN (crop)": "LSUN-crop"}.get(label, label)


def norm_order(label: str) -> float:
    """p of a printed norm label: ``L_1``, ``$L_{0.3}$``, ``L_∞``."""
    match = re.fullmatch(r"\$?L_(?:\{(?P<braced>[0-9.]+)\}|(?P<plain>[0-9]+)|(?P<inf>∞))\$?", label)
    assert match, f"not a norm label: {label!r}"
    return math.inf if match["inf"] else float(match["braced"] or match["plain"])


def tab_block(text: str, section: str, caption: str | None) -> list[list[str]]:
    """The cells of the first run of tab-separated lines after the line starting with
    ``section``; the next non-blank line must start with ``caption`` where one is given."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(section)]
    assert len(starts) == 1, f"section {section!r} found {len(starts)} times"
    block, end = [], len(lines)
    for i in range(starts[0] + 1, len(lines)):
        if "\t" in lines[i]:
            block.append(lines[i].split("\t"))
        elif block:
            end = i
            break
    assert block, f"no table after {section!r}"
    if caption is not None:
        following = [line for line in lines[end:] if line.strip()]
        assert following and following[0].startswith(caption), f"no {caption!r} after the table"
    return block


def forward_fill(cells: list[str]) -> list[str]:
    filled, last = [], ""
    for cell in cells:
        last = cell or last
        filled.append(last)
    return filled


def parse_wide(block: list[list[str]], labels: tuple[str, ...]) -> list[tuple]:
    """A table with one row per setting and a two-column (FPR95, AUROC) group per dataset.

    Header: dataset names over their first column, metric names (given once, under the first
    dataset, or under every one), arrows. Empty label cells repeat the row above (``ID Data``).
    Returns (label values, dataset, {metric: printed number}) in reading order."""
    n = len(labels)
    header = [row for row in block if not all(NUMBER.fullmatch(c) for c in row[n:] if c)]
    body = block[len(header) :]
    assert len(header) == 3, f"expected 3 header rows (names, metrics, arrows): {header}"
    assert header == block[:3] and body, "header rows must come first, then numbers"
    width = len(body[0]) - n
    assert all(len(row) <= n + width for row in header), "header wider than the numbers"
    names, metrics, arrows = (row + [""] * (n + width - len(row)) for row in header)
    assert tuple(names[:n]) == labels and metrics[:n] == arrows[:n] == [""] * n
    span, remainder = divmod(width, sum(1 for cell in names[n:] if cell))
    assert remainder == 0 and names[n] and metrics[n : n + span], names
    metric_of = [metrics[n + i] or metrics[n + i % span] for i in range(width)]
    assert all(arrows[n + i] == ARROWS[metric_of[i]] for i in range(width)), arrows
    datasets = forward_fill(names[n:])
    previous = [""] * n
    records = []
    for row in body:
        assert len(row) == n + width and all(NUMBER.fullmatch(c) for c in row[n:]), row
        previous = [cell or before for cell, before in zip(row[:n], previous, strict=True)]
        assert all(previous), f"a label cell with nothing above it: {row}"
        for start in range(0, width, span):
            assert len(set(datasets[start : start + span])) == 1
            cells = dict(
                zip(metric_of[start : start + span], row[n + start : n + start + span], strict=True)
            )
            assert sorted(cells) == ["AUROC", "FPR95"], metric_of
            records.append((tuple(previous), datasets[start], cells))
    return records


def parse_long(block: list[list[str]], labels: tuple[str, str]) -> list[tuple]:
    """Table 7's layout: a group column (filled on its first row only), a label column, one
    column per metric headed "FPR95 ↓" / "AUROC ↑". Returns (group, label, {metric: number})."""
    header, *body = block
    assert tuple(header[:2]) == labels
    metrics = []
    for cell in header[2:]:
        metric, arrow = cell.split()
        assert ARROWS[metric] == arrow, cell
        metrics.append(metric)
    records, group = [], ""
    for row in body:
        assert len(row) == 2 + len(metrics) and all(NUMBER.fullmatch(c) for c in row[2:]), row
        group = row[0] or group
        records.append((group, row[1], dict(zip(metrics, row[2:], strict=True))))
    return records


def parse_markdown(text: str, heading: str) -> tuple[str, list[list[str]]]:
    """The heading line and the body cells of the markdown table under it."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(heading)]
    assert len(starts) == 1, f"heading {heading!r} found {len(starts)} times"
    rows = []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    header, separator, *body = rows
    assert all(cell and set(cell) <= set("-: ") for cell in separator), separator
    return lines[starts[0]], [header, *body]


def record(name, id_data, ood_data, method, p, temperature, cells) -> tuple:
    fpr, auroc = cells["FPR95"], cells["AUROC"]
    assert NUMBER.fullmatch(fpr) and NUMBER.fullmatch(auroc), cells
    return (name, id_data, dataset_name(ood_data), method, p, temperature, float(fpr), float(auroc))


def printed_table1(protocol: str) -> list[tuple]:
    heading, (header, *body) = parse_markdown(protocol, "### Table 1")
    assert "ImageNet-1k" in heading and "BiT-S-R101x1" in heading
    assert "FPR95 / AUROC" in heading  # the order of the two numbers in every cell
    assert header == ["Method", *IMAGENET_OOD, "Average"]
    records = []
    for label, *cells in body:
        method = method_name(label)
        for dataset, cell in zip(header[1:], cells, strict=True):
            fpr, auroc = cell.split(" / ")
            records.append(
                record(
                    "table1",
                    "ImageNet-1k",
                    dataset,
                    method,
                    *SETTINGS[method],
                    {"FPR95": fpr, "AUROC": auroc},
                )
            )
    return records


def printed_table6(text: str) -> list[tuple]:
    block = tab_block(text, "A Evaluation on CIFAR Benchmarks", "Table 6:")
    records = []
    for (id_data, label), dataset, cells in parse_wide(block, ("ID Data", "Method")):
        method = method_name(label)
        records.append(record("table6", id_data, dataset, method, *SETTINGS[method], cells))
    return records


def printed_table7(text: str) -> list[tuple]:
    block = tab_block(text, "C Complete Results Under Different L_p", "Table 7:")
    return [
        record("table7", "ImageNet-1k", dataset, "GradNorm", norm_order(label), 1.0, cells)
        for dataset, label, cells in parse_long(block, ("OOD Data", "Norm"))
    ]


def printed_table8(text: str) -> list[tuple]:
    block = tab_block(text, "D Complete Results Under Different Scaling Temperatures", "Table 8:")
    return [
        record("table8", "ImageNet-1k", dataset, "GradNorm", 1.0, float(temperature), cells)
        for (temperature,), dataset, cells in parse_wide(block, ("Temperature",))
    ]


def printed_table9(text: str) -> list[tuple]:
    # the appendix ends with this table: it has no caption in the text
    block = tab_block(text, "E Comparison with Lee and AlRegib", None)
    records = []
    for (label,), dataset, cells in parse_wide(block, ("Method",)):
        method = method_name(label)
        records.append(record("table9", "ImageNet-1k", dataset, method, *SETTINGS[method], cells))
    return records


PRINTED = {
    "table1": ("protocol", printed_table1),
    "table6": ("supplementary", printed_table6),
    "table7": ("supplementary", printed_table7),
    "table8": ("supplementary", printed_table8),
    "table9": ("supplementary", printed_table9),
}


def comparable(rows: list[tuple]) -> list[tuple]:
    """NaN (not applicable) as None, so that equal rows compare equal."""
    return [
        tuple(None if isinstance(v, float) and math.isnan(v) else v for v in row) for row in rows
    ]


# ---- every cell against the paper's text ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRINTED))
def test_every_cell_matches_the_papers_text(name, request):
    source, parse = PRINTED[name]
    printed = parse(request.getfixturevalue(source))
    transcribed = list(reported.table(name).itertuples(index=False, name=None))
    assert len(printed) == ROW_COUNTS[name]
    # same labels, same settings, same numbers, in the paper's reading order
    assert comparable(transcribed) == comparable(printed)


def test_printed_grids_have_the_papers_shape(protocol, supplementary):
    """Table 7: 5 OOD groups x 10 norms; Table 8: 15 temperatures x 5 columns; Table 6:
    2 ID sets x 5 methods x 5 columns; Tables 1 and 9: methods x 5 columns."""
    norms = pd.DataFrame(printed_table7(supplementary)).groupby(2)[4].apply(list)
    assert list(norms.index) == sorted([*IMAGENET_OOD, "Average"])
    assert all(found == PAPER_NORMS for found in norms)
    temperatures = pd.DataFrame(printed_table8(supplementary)).groupby(5)[2].apply(list)
    assert list(temperatures.index) == [2.0**k for k in range(-4, 11)]
    assert all(found == [*IMAGENET_OOD, "Average"] for found in temperatures)
    cifar = pd.DataFrame(printed_table6(supplementary)).groupby([1, 3]).size()
    assert len(cifar) == 2 * 5 and set(cifar) == {5}
    assert {row[3] for row in printed_table1(protocol)} == set(SETTINGS) - {"Lee-AlRegib"}
    assert [row[3] for row in printed_table9(supplementary)][::5] == ["Lee-AlRegib", "GradNorm"]


@pytest.mark.parametrize("name", sorted(ROW_COUNTS))
def test_row_counts(name):
    frame = reported.table(name)
    assert len(frame) == ROW_COUNTS[name]
    # every setting has the four OOD datasets of its protocol and the Average, once each
    settings = frame.groupby(["id_data", "method", "p", "temperature"], dropna=False)
    for (id_data, *_), group in settings:
        ood = IMAGENET_OOD if id_data == "ImageNet-1k" else CIFAR_OOD
        assert list(group["ood_data"]) == [*ood, "Average"]


def test_paper_labels_map_to_the_canonical_names():
    for label, name in reported.PAPER_LABELS.items():
        assert name in {method_name(label), dataset_name(label)}
        assert name in reported.METHODS or name in reported.OOD_DATASETS


def test_baseline_settings_are_stated_in_the_appendix(supplementary):
    assert "we set the temperature scaling parameter $T = 1000$" in supplementary
    odin = reported.table("table6").query("method == 'ODIN'")
    assert set(odin["temperature"]) == {1000.0}


# ---- invariants that catch transcription slips ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "setting"),
    [("table7", "p == 1"), ("table8", "temperature == 1"), ("table9", "method == 'GradNorm'")],
)
def test_gradnorm_default_rows_equal_table1(name, setting):
    main = reported.table("table1").query("method == 'GradNorm'")
    rows = reported.table(name).query(setting)
    columns = ["id_data", "ood_data", "method", "p", "temperature", "FPR95", "AUROC"]
    assert rows[columns].reset_index(drop=True).equals(main[columns].reset_index(drop=True))


def average_gaps(frame: pd.DataFrame) -> list[tuple]:
    """(setting, metric, printed Average, mean of the four printed values) for every row."""
    gaps = []
    for setting, group in frame.groupby(["id_data", "method", "p", "temperature"], dropna=False):
        datasets = group[group["ood_data"] != "Average"]
        average = group[group["ood_data"] == "Average"]
        assert len(datasets) == 4 and len(average) == 1
        for metric in ("FPR95", "AUROC"):
            gaps.append((setting, metric, average[metric].item(), datasets[metric].mean()))
    return gaps


# The paper's Average is its unrounded mean x rounded to 2 decimals (off by <= 0.005); each
# printed value is off from its unrounded one by <= 0.005, so the mean of the four printed
# values is off from x by <= 0.005 too: the two differ by at most 0.01. The 1e-9 covers float
# error of summing four numbers below 100 (~1e-13).
AVERAGE_TOLERANCE = 0.01 + 1e-9


@pytest.mark.parametrize("name", sorted(ROW_COUNTS))
def test_average_is_the_mean_of_the_four_datasets(name):
    gaps = average_gaps(reported.table(name))
    assert len(gaps) == 2 * ROW_COUNTS[name] // 5
    # findings: no Average of the paper disagrees beyond rounding (largest gap: 0.005)
    disagreeing = [gap for gap in gaps if abs(gap[2] - gap[3]) > AVERAGE_TOLERANCE]
    assert disagreeing == []


@pytest.mark.parametrize(
    ("claim", "table", "query", "baseline", "metric"),
    [
        # "reduces the average FPR95 by 8.77% on CIFAR-10 compared to the best baseline"
        ("by **8.77%** on CIFAR-10", "table6", "id_data == 'CIFAR-10'", None, "FPR95"),
        # "outperforms the best baseline energy score [29] by 14.47% in FPR95"
        ("energy score [29] by **14.47%**", "table6", "id_data == 'CIFAR-100'", "Energy", "FPR95"),
        # "GradNorm outperforms [25] by 15.45% in FPR95 on average"
        (
            "outperforms [25] by 15.45%",
            "table9",
            "id_data == 'ImageNet-1k'",
            "Lee-AlRegib",
            "FPR95",
        ),
    ],
)
def test_gains_claimed_in_the_text(supplementary, claim, table, query, baseline, metric):
    assert claim in supplementary
    claimed = float(re.search(r"(\d+\.\d{2})%", claim)[1])
    averages = reported.table(table).query(f"{query} and ood_data == 'Average'")
    by_method = averages.set_index("method")[metric]
    best = by_method.drop("GradNorm").idxmin()
    assert baseline in (None, best)
    assert round(by_method[best] - by_method["GradNorm"], 2) == claimed


def test_best_norm_and_temperature_claimed_in_the_text(supplementary):
    assert "L_1 -norm achieves the best overall performance" in supplementary
    assert "$T = 1$ achieves the best average performance" in supplementary
    for name, column in (("table7", "p"), ("table8", "temperature")):
        average = reported.table(name).query("ood_data == 'Average'").set_index(column)
        assert average["FPR95"].idxmin() == 1.0 and average["AUROC"].idxmax() == 1.0


def test_settings_are_gradnorms_hyperparameter_space():
    assert reported.table("table7")["p"].unique().tolist() == PAPER_NORMS
    assert reported.table("table8")["temperature"].unique().tolist() == PAPER_TEMPERATURES


# ---- the API ------------------------------------------------------------------------------


def test_tables_lists_the_transcribed_ones():
    assert reported.tables() == ["table1", "table6", "table7", "table8", "table9"]


@pytest.mark.parametrize("name", sorted(ROW_COUNTS))
def test_columns_and_dtypes(name):
    frame = reported.table(name)
    assert tuple(frame.columns) == reported.COLUMNS
    for column in ("table", "id_data", "ood_data", "method"):
        assert pd.api.types.is_string_dtype(frame[column])
        assert all(isinstance(value, str) for value in frame[column])
    for column in ("p", "temperature", "FPR95", "AUROC"):
        assert frame[column].dtype == "float64"
    assert set(frame["table"]) == {name}
    assert set(frame["id_data"]) <= set(reported.ID_DATASETS)
    assert set(frame["ood_data"]) <= set(reported.OOD_DATASETS)
    assert set(frame["method"]) <= set(reported.METHODS)
    assert frame[["FPR95", "AUROC"]].notna().all().all()
    assert frame["FPR95"].between(0, 100).all() and frame["AUROC"].between(0, 100).all()


def test_inf_and_not_applicable_values():
    assert reported.table("table7")["p"].iloc[-1] == math.inf
    table1 = reported.table("table1").set_index("method")
    assert table1.loc["MSP", "p"].isna().all()
    assert (table1.loc["ODIN", "temperature"] == 1000.0).all()
    assert table1.loc["Mahalanobis", ["p", "temperature"]].isna().all().all()
    lee = reported.table("table9").query("method == 'Lee-AlRegib'")
    assert lee[["p", "temperature"]].isna().all().all()


def test_description_names_the_model_and_protocol():
    for name in reported.tables():
        text = reported.describe(name)
        model = "ResNet-20" if name == "table6" else "BiT-S-R101x1"
        assert model in text and f"Table {name.removeprefix('table')}" in text
        assert reported.table(name).attrs["description"] == text


def test_each_call_returns_a_fresh_frame():
    frame = reported.table("table1")
    frame.loc[0, "FPR95"] = 0.0
    assert reported.table("table1").loc[0, "FPR95"] == 63.69


def test_unknown_table_lists_the_known_ones():
    with pytest.raises(
        ValueError, match="unknown table 'table2'; known tables: table1, table6, table7, table8"
    ):
        reported.table("table2")
    with pytest.raises(ValueError, match="unknown table 'Table 1'"):
        reported.describe("Table 1")


GOOD_ROW = "ImageNet-1k,SUN,GradNorm,1,1,46.48,89.03"
HEADER = "id_data,ood_data,method,p,temperature,FPR95,AUROC"


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """Shipped files as written here: ``shipped(name, *lines)`` writes ``name`` into a folder
    that the reported module reads instead of its own."""
    monkeypatch.setattr(reported, "_source", lambda filename: tmp_path / filename)
    for cached in (reported._load, reported._measurement):
        cached.cache_clear()
    yield lambda name, *lines: (tmp_path / name).write_text("".join(f"{x}\n" for x in lines))
    for cached in (reported._load, reported._measurement):
        cached.cache_clear()


@pytest.fixture
def parse_csv(shipped):
    def parse(*lines: str) -> pd.DataFrame:
        shipped("tableX.csv", *lines)
        reported._load.cache_clear()
        return reported._load("tableX")

    return parse


def test_parses_comments_inf_and_empty_cells(parse_csv):
    frame = parse_csv(
        "# a comment", HEADER, GOOD_ROW, "ImageNet-1k,SUN,Mahalanobis,,,88.43,65.20"
    ).set_index("method")
    assert frame.loc["GradNorm", "p"] == 1.0 and math.isnan(frame.loc["Mahalanobis", "p"])
    assert parse_csv(HEADER, GOOD_ROW.replace(",1,1,", ",inf,1,"))["p"].item() == math.inf


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["id_data,ood_data,method,p,T,FPR95,AUROC", GOOD_ROW], "tableX.csv: columns"),
        ([HEADER, GOOD_ROW.replace("GradNorm", "gradnorm")], "unknown method \\['gradnorm'\\]"),
        ([HEADER, GOOD_ROW.replace("SUN", "LSUN")], "unknown ood_data \\['LSUN'\\]"),
        ([HEADER, GOOD_ROW.replace("46.48", "nan")], "row 1, column FPR95: invalid value 'nan'"),
        ([HEADER, GOOD_ROW.replace("46.48", "")], "row 1, column FPR95: invalid value ''"),
        ([HEADER, GOOD_ROW.replace("89.03", "189.03")], "column AUROC: invalid value '189.03'"),
        ([HEADER, GOOD_ROW.replace(",1,1,", ",0,1,")], "column p: invalid value '0'"),
        ([HEADER, GOOD_ROW.replace(",1,1,", ",l1,1,")], "column p: invalid value 'l1'"),
        ([HEADER, GOOD_ROW.replace(",1,1,", ",1,inf,")], "column temperature: invalid value"),
        ([HEADER, GOOD_ROW, GOOD_ROW.replace("46.48", "46.49")], "tableX.csv: repeated rows"),
    ],
)
def test_bad_data_files_are_named_errors(parse_csv, lines, message):
    with pytest.raises(ValueError, match=message):
        parse_csv(*lines)


def test_repeated_rows_with_not_applicable_settings_are_found(parse_csv):
    row = "ImageNet-1k,SUN,Mahalanobis,,,88.43,65.20"
    with pytest.raises(ValueError, match="repeated rows"):
        parse_csv(HEADER, row, row)


def test_data_files_are_package_data():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))
    assert "*.csv" in config["tool"]["setuptools"]["package-data"]["gradood.reported"]


def test_every_method_of_every_table_says_how_it_is_measured():
    from gradood import available_detectors
    from gradood.harness.checks import TOLERANCES

    for name in reported.tables():
        table = reported.table(name)
        for method in table["method"].unique():
            how = reported.measured_as(name, method)
            assert how["tolerance"] in TOLERANCES, (name, method)
            assert how["detector"] in available_detectors(), (name, method)
            assert set(how["settings"]) <= set(table.columns), (name, method)
            assert how["varies"] in (None, "p", "temperature")
            if how["varies"] is not None:  # the swept setting names every row of the table
                settings = reported.table(name)[how["varies"]]
                assert settings.nunique() == len(settings) // settings.value_counts().iloc[0]
    with pytest.raises(ValueError, match="no single entry for KNN of table1"):
        reported.measured_as("table1", "KNN")


MEASUREMENT_HEADER = "table,method,detector,tolerance,varies,settings"


@pytest.mark.parametrize(
    ("name", "lines", "message"),
    [
        ("table7.csv", [], "table7.csv: the file is empty"),
        ("table7.csv", ["# only comments"], "table7.csv: the file is empty"),
        ("table7.csv", [HEADER], "table7.csv: 0 data rows, fewer than 50, the rows the paper"),
        ("table7.csv", [HEADER, *[GOOD_ROW] * 3], "table7.csv: 3 data rows, fewer than 50"),
        ("table1.csv", [HEADER.replace(",AUROC", ""), GOOD_ROW], "table1.csv: columns"),
        ("measurement.csv", [], "measurement.csv: the file is empty"),
        ("measurement.csv", [MEASUREMENT_HEADER], "measurement.csv: 0 data rows, fewer than 14"),
        (
            "measurement.csv",
            [MEASUREMENT_HEADER.replace(",settings", ""), "table1,MSP,msp,deterministic,"],
            "measurement.csv: columns .* expected .*'settings'",
        ),
    ],
)
def test_shipped_files_cut_short_or_emptied_are_errors_naming_their_path(
    shipped, tmp_path, name, lines, message
):
    """A reported table with its header only must not make its checks vanish (row 6), nor an
    empty or column-less file raise pandas' or a KeyError without the file (row 7)."""
    shipped(name, *lines)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path))}/{message}"):
        if name == "measurement.csv":
            reported.measured_as("table1", "MSP")
        else:
            reported.table(name.removesuffix(".csv"))


def test_the_shipped_files_hold_the_papers_rows_and_their_installed_path_is_named():
    counts = reported._least_rows()
    for name in reported.tables():
        assert len(reported.table(name)) >= counts[f"{name}.csv"]
    assert len(reported._measurement()) == counts["measurement.csv"]
    assert str(reported._source("table7.csv")).endswith(
        os.path.join("gradood", "reported", "table7.csv")
    )
