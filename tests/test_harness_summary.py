"""The run's closing summary: short, narrow, sorted, and saying what was and was not measured."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from gradood.harness.checks import Comparison, paper_checks
from gradood.harness.report import Report
from gradood.harness.summary import MAX_LINES, MAX_WIDTH, below_chance_lines, summary_lines
from gradood.harness.timing import PairedRatio, SpeedCheck, Target


def _table() -> pd.DataFrame:
    rows = []
    for method, p, auroc in [("msp", None, 0.7), ("energy", None, 0.6), ("knn", None, 0.9)]:
        rows += [
            {
                "method": method,
                "settings": "",
                "p": p,
                "ood_data": ood,
                "FPR95": 0.5,
                "AUROC": auroc,
            }
            for ood in ("near", "far", "Average")
        ]
    for p, auroc in [(1.0, 0.65), (0.5, 0.8), (2.0, 0.3)]:
        rows += [
            {"method": "gradnorm", "settings": f"p={p}", "p": p, "ood_data": ood, "FPR95": 0.4}
            | {"AUROC": auroc}
            for ood in ("near", "far", "Average")
        ]
    return pd.DataFrame(rows)


def _report() -> Report:
    report = Report(tables={"toy": _table()}, captions={"toy": "a toy model"})
    report.defaults["toy"] = {"gradnorm": {"p": 1.0}}
    report.speed.append(
        SpeedCheck("resnet18 32px b64", "GradNorm / MSP", PairedRatio((1.0,) * 5), Target(0.95))
    )
    table7 = paper_checks(["table7"])
    report.comparisons = [Comparison(c, c.fpr95 + 0.05, c.auroc) for c in table7[:10]]
    report.comparisons.append(Comparison(table7[10], table7[10].fpr95, table7[10].auroc - 1.0))
    report.skipped = [
        (check, f"{check.protocol}: 5 datasets missing (...)") for check in paper_checks(["table6"])
    ]
    for protocol in ("cifar10", "cifar100"):
        report.add_missing(protocol, "data", "5 datasets missing", "- not found")
    return report


def test_short_narrow_and_complete():
    lines = summary_lines(_report(), Path("reports/run"))
    assert len(lines) <= MAX_LINES and max(map(len, lines)) <= MAX_WIDTH
    text = "\n".join(lines)
    order = [
        next(i for i, line in enumerate(lines) if line.strip().startswith(m))
        for m in ("knn", "msp", "gradnorm", "energy")
    ]
    assert order == sorted(order)  # by AUROC, GradNorm at its default setting (AUROC 65 %)
    assert "gradnorm p=1" in text and "best AUROC of 3: p=0.5 (40.00 / 80.00)" in text
    assert "toy: a toy model; OOD: near, far" in text and "Average of 2 OOD sets" in text
    assert "by AUROC" in lines[1]  # the order that "best" also follows
    assert "GradNorm / MSP" in text and "met" in text
    assert lines[-1] == "report: reports/run"


def test_a_long_table_lists_the_best_and_gradnorm_and_counts_the_rest():
    report = _report()
    table = report.tables["toy"]
    extra = pd.DataFrame(
        {"method": f"d{i}", "settings": "", "p": None, "ood_data": ood, "FPR95": 0.1}
        | {"AUROC": 0.95 + i / 1000}
        for i in range(30)
        for ood in ("near", "far", "Average")
    )
    report.tables["toy"] = pd.concat([table, extra], ignore_index=True)
    lines = summary_lines(report, Path("reports/run"))
    assert len(lines) <= MAX_LINES
    text = "\n".join(lines)
    assert "d29" in text and "gradnorm p=1" in text and "knn" not in text
    assert "by AUROC; 24 more in the report" in text  # 34 = 9 best + gradnorm + 24


def test_paper_lines_count_rows_and_name_the_worst():
    text = "\n".join(summary_lines(_report(), Path("reports/run")))
    assert "imagenet  11 of 11 rows run, 10 within tolerance\n" in text
    assert f"worst: {_report().comparisons[10].check.id} AUROC -1.00 (tol 0.1)" in text
    rows = sum(check.protocol == "cifar100" for check in paper_checks(["table6"]))
    expected = f"cifar100  0 of {rows} rows run: 5 datasets missing"
    assert f"{expected} (details: reports/run/missing-data.md)" in text


def test_without_a_folder_nothing_points_to_one():
    lines = summary_lines(_report(), None)
    assert not any("report:" in line or "details:" in line for line in lines)


def _factor_table(u_auroc: dict[str, float], v_auroc: dict[str, float]) -> pd.DataFrame:
    """GradNorm, its factors and MSP on two OOD sets, at p = 1 and p = 2 (AUROC fractions)."""
    rows = []
    for p in (1.0, 2.0):
        for method, aurocs in [
            ("gradnorm", {"near": 0.7, "far": 0.2}),
            ("gradnorm-u", u_auroc),
            ("gradnorm-v", v_auroc),
        ]:
            shift = 0.0 if p == 1.0 else 0.25  # other numbers at p = 2: must not be used
            for ood, auroc in aurocs.items():
                rows.append({"method": method, "p": p, "ood_data": ood, "AUROC": auroc + shift})
    for ood, auroc in {"near": 0.45, "far": 0.3}.items():
        rows.append({"method": "energy", "p": None, "ood_data": ood, "AUROC": auroc})
    frame = pd.DataFrame(rows)
    frame["FPR95"] = 0.5
    averages = frame.groupby(["method", "p"], dropna=False, as_index=False).mean(numeric_only=True)
    return pd.concat([frame, averages.assign(ood_data="Average")], ignore_index=True)


DEFAULTS = {"gradnorm": {"p": 1.0}, "gradnorm-u": {"p": 1.0}, "gradnorm-v": {"p": 1.0}}


def test_why_a_detector_is_below_chance_comes_from_the_numbers():
    table = _factor_table({"near": 0.6, "far": 0.01}, {"near": 0.9, "far": 0.55})
    lines = below_chance_lines(table, {**DEFAULTS, "energy": {}})
    assert lines == [
        "  gradnorm AUROC 20.00 % on far: U (feature norm) 1.00 %, V (output norm) 55.00 %",
        "  energy 30.00 % AUROC on far: U (feature norm) there 1.00 %",
    ]
    other = _factor_table({"near": 0.6, "far": 0.8}, {"near": 0.9, "far": 0.1})
    assert below_chance_lines(other, DEFAULTS) == [
        "  gradnorm AUROC 20.00 % on far: U (feature norm) 80.00 %, V (output norm) 10.00 %"
    ]


def test_the_worst_set_is_named():
    table = _factor_table({"near": 0.6, "far": 0.01}, {"near": 0.9, "far": 0.55})
    table.loc[(table["method"] == "gradnorm") & (table["ood_data"] == "near"), "AUROC"] = 0.1
    (line,) = below_chance_lines(table, DEFAULTS)
    assert (
        line
        == "  gradnorm AUROC 10.00 % on near: U (feature norm) 60.00 %, V (output norm) 90.00 %"
    )


def test_no_line_when_every_detector_is_above_chance():
    table = _factor_table({"near": 0.6, "far": 0.01}, {"near": 0.9, "far": 0.55})
    table.loc[table["method"] == "gradnorm", "AUROC"] = 0.9
    assert below_chance_lines(table, DEFAULTS) == []


def _two_rows(second: dict) -> Report:
    rows = [
        {"method": "mahalanobis", "ood_data": "Average", "FPR95": 0.0491, "AUROC": 0.991862},
        {"method": "mahalanobis-odin", "ood_data": "Average"} | second,
    ]
    return Report(tables={"t": pd.DataFrame(rows)})


def test_rows_that_print_alike_get_more_digits_and_identical_rows_are_merged():
    lines = summary_lines(_two_rows({"FPR95": 0.0491, "AUROC": 0.991934}), None)
    assert any(line.split()[-2:] == ["4.910", "99.193"] for line in lines)
    assert any(line.split()[-2:] == ["4.910", "99.186"] for line in lines)
    lines = summary_lines(_two_rows({"FPR95": 0.0491, "AUROC": 0.991862}), None)
    assert "  mahalanobis = mahalanobis-odin" in "\n".join(lines)


def test_a_long_reason_is_shortened_at_a_word_and_the_path_kept_whole():
    report = _report()
    long_reason = "5 datasets missing: " + " ".join(["iNaturalist SUN Places Textures"] * 4)
    report.unavailable["cifar10"] = long_reason
    lines = summary_lines(report, Path("reports/run"))
    line = next(line for line in lines if line.startswith("  cifar10"))
    assert len(line) <= MAX_WIDTH
    assert line.endswith("... (details: missing-data.md)")
    assert line.startswith("  cifar10   0 of 25 rows run: 5 datasets missing")


def test_the_summary_keeps_to_its_lines_when_sections_grow():
    report = _report()
    report.speed *= 20
    lines = summary_lines(report, Path("reports/run"))
    assert len(lines) <= MAX_LINES
    assert any(line.strip().startswith("gradnorm p=1") for line in lines)  # pinned rows stay


def test_a_protocol_measured_below_chance_says_why_under_its_checks():
    report = _report()
    table = _factor_table({"near": 0.6, "far": 0.01}, {"near": 0.9, "far": 0.55})
    report.add_measured("imagenet", table, DEFAULTS)
    lines = summary_lines(report, Path("reports/run"))
    start = lines.index("the paper's checks:")
    why = "gradnorm AUROC 20.00 % on far: U (feature norm) 1.00 %, V (output norm) 55.00 %"
    assert " " * 12 + why in lines[start:]


def test_every_skipped_protocol_names_the_details_alike():
    report = _report()
    report.unavailable["cifar100"] = "5 datasets missing: " + "Places365 " * 3
    lines = summary_lines(report, Path("reports/20260101-120000"))
    skipped = [line for line in lines if line.startswith(("  cifar10 ", "  cifar100"))]
    assert len(skipped) == 2 and max(map(len, skipped)) <= MAX_WIDTH
    # the path fits on cifar10's line, not on cifar100's: both name the file alike
    assert all(line.endswith(" (details: missing-data.md)") for line in skipped)
    lines = summary_lines(_report(), Path("reports/20260101-120000"))
    assert any(
        line.endswith("(details: reports/20260101-120000/missing-data.md)") for line in lines
    )


def _speed_report(ratios: tuple[float, ...], policy: str) -> Report:
    check = SpeedCheck("resnet18 32px b64", "GradNorm / MSP", PairedRatio(ratios), Target(0.95))
    return Report(speed=[check], policies={"speed": policy} if policy else {})


POLICY = "CPU verdicts are reported, not enforced: --enforce-speed makes a missed target fail"


@pytest.mark.parametrize("ratios", [(0.5,) * 5, (0.5, 0.5, 1.0, 1.0, 1.0)])
def test_a_missed_or_inconclusive_verdict_that_does_not_fail_says_so(ratios):
    """Under "N passed", a missed target reads as a contradiction unless the summary says that
    it does not fail the run, and how to make it fail."""
    lines = summary_lines(_speed_report(ratios, POLICY), None)
    assert lines[1] == f"  {POLICY}"


def test_no_policy_line_where_every_verdict_is_met_or_the_run_enforces():
    assert POLICY not in "\n".join(summary_lines(_speed_report((1.0,) * 5, POLICY), None))
    assert not any(
        "not enforced" in line for line in summary_lines(_speed_report((0.5,) * 5, ""), None)
    )


def test_the_report_line_keeps_a_long_path_whole():
    folder = Path("/tmp/a folder with spaces") / ("x" * 120)
    lines = summary_lines(_speed_report((1.0,) * 5, ""), folder)
    assert lines[-1] == f"report: {folder}"


def test_every_selected_row_is_counted_run_skipped_raised_or_not_reached():
    report = _report()
    cifar10 = [c for c in paper_checks(["table6"]) if c.protocol == "cifar10"]
    report.skipped = [(c, "cifar10: 5 datasets missing (...)") for c in cifar10[:3]]
    report.errored = [(c, "ValueError: the checkpoint is not one") for c in cifar10[3:5]]
    report.errored.append((cifar10[5], "RuntimeError: a later error"))
    report.planned["cifar10"] = [c.id for c in cifar10]
    report.planned["cifar100"] = ["table6[CIFAR-100-SVHN-MSP]"]  # selected, never reached
    report.add_missing("cifar10", "error", "", "- the traceback")
    lines = summary_lines(report, Path("reports/run"))
    assert len(lines) <= MAX_LINES and max(map(len, lines)) <= MAX_WIDTH
    start = lines.index("the paper's checks:")
    line = next(line for line in lines[start:] if line.startswith("  cifar10 "))
    at = lines.index(line)
    rest = len(cifar10) - 6
    assert line == (
        f"  cifar10   0 of {len(cifar10)} rows run: 3 skipped, 3 raised, {rest} not reached "
        "(details: missing-data.md)"  # the path would pass MAX_WIDTH
    )
    assert lines[at + 1 : at + 3] == [
        " " * 12 + "skipped: 5 datasets missing",
        " " * 12 + "first error: ValueError: the checkpoint is not one",
    ]
    assert "  cifar100  0 of 1 row run: 1 not reached" in lines


def test_a_protocol_whose_rows_all_raised_says_the_first_error():
    report = Report()
    cifar10 = [c for c in paper_checks(["table6"]) if c.protocol == "cifar10"]
    report.planned["cifar10"] = [c.id for c in cifar10]
    report.errored = [(c, "ValueError: 'x.pt' is not a checkpoint") for c in cifar10]
    report.add_missing("cifar10", "error", "", "- the traceback")
    assert summary_lines(report, None) == [
        "the paper's checks:",
        f"  cifar10   0 of {len(cifar10)} rows run: {len(cifar10)} raised",
        "            first error: ValueError: 'x.pt' is not a checkpoint",
        "",
    ]


def test_many_speed_checks_fit_the_summary_and_keep_what_was_not_met():
    """Every check is in speed.txt; the summary keeps its line budget, lists the checks that
    were not met first of all, and counts the rest."""
    met = [
        SpeedCheck(f"resnet{i} 32px b64", "GradNorm / MSP", PairedRatio((1.0,) * 5), Target(0.95))
        for i in range(40)
    ]
    missed = SpeedCheck(
        "resnet99 32px b64", "GradNorm / MSP", PairedRatio((0.5,) * 5), Target(0.95)
    )
    report = Report(speed=[*met[:30], missed, *met[30:]], policies={"speed": POLICY})
    lines = summary_lines(report, Path("reports/run"))
    assert len(lines) <= MAX_LINES
    assert "  " + missed.line() in lines
    shown = [line for line in lines if "resnet" in line]
    assert len(shown) == len(lines) - 5  # header, policy, the count, a blank, the report
    assert f"  ... {41 - len(shown)} more ({41 - len(shown)} met): speed.txt" in lines


def test_every_missed_or_inconclusive_speed_check_is_listed_past_the_budget():
    """A CPU run may miss many targets: each is listed; the budget cuts the met ones only."""
    report = _report()
    ratio = {"missed": (0.5,) * 5, "inconclusive": (0.5, 0.5, 1.0, 1.0, 1.0), "met": (1.0,) * 5}
    report.speed = [
        SpeedCheck(f"resnet{i} 32px b64", "GradNorm / MSP", PairedRatio(ratio[kind]), Target(0.95))
        for i, kind in enumerate(["missed", "inconclusive"] * 20 + ["met"] * 10)
    ]
    report.policies["speed"] = POLICY
    lines = summary_lines(report, Path("reports/run"))
    unsettled = [c for c in report.speed if c.verdict != "met"]
    assert [c.verdict for c in unsettled] == ["missed", "inconclusive"] * 20  # more than fit
    assert all("  " + check.line() in lines for check in unsettled)
    shown_met = [c for c in report.speed if c.verdict == "met" and "  " + c.line() in lines]
    assert f"  ... {10 - len(shown_met)} more ({10 - len(shown_met)} met): speed.txt" in lines
