"""evaluate(): every row equals the paper's metrics of ``detector.predict(x)`` on the raw data,
computed here independently; the cached detectors share one forward pass per dataset."""

from __future__ import annotations

import functools
import math
import pickle
import sys

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pytorch_ood.api import Detector
from pytorch_ood.benchmark import Benchmark
from pytorch_ood.detector import ODIN, EnergyBased, Mahalanobis, MaxSoftmax
from torch.utils.data import ConcatDataset, TensorDataset

import gradood
from gradood import GradNorm, create_detector, paper_metrics
from gradood.evaluate import AVERAGE, METRICS, CachedScorer, detector_grid
from gradood.features import extract_features
from gradood.heads import penultimate_encoder
from gradood.testing import SmallCNN

BATCH = 5
# evaluate() and the reference below do the same float64 arithmetic on the same batches; the
# cached detectors score all rows of a dataset at once instead of batch by batch, which changes
# no per-row arithmetic beyond rounding order (~1e-16 relative). Rankings, hence the metrics,
# are then identical unless two scores lie within rounding of each other; the tolerance only
# covers the float sum in the averages.
ABS = 1e-12


class CountingCNN(SmallCNN):
    """Counts samples in a class attribute, which is not part of the model's fingerprint."""

    samples = 0

    def forward(self, x):
        CountingCNN.samples += x.shape[0]
        return super().forward(x)


def make_model(seed: int = 0) -> CountingCNN:
    torch.manual_seed(seed)
    model = CountingCNN(num_classes=3).double()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def images(size: int, generator: torch.Generator, shift: float = 0.0, scale: float = 1.0):
    return torch.randn(size, 3, 8, 8, generator=generator, dtype=torch.float64) * scale + shift


class TinyBenchmark(Benchmark):
    """An ID test set of 16 and two OOD sets of 11 and 7 samples (sizes tell them apart)."""

    ood_names = ["noise", "shifted"]

    def __init__(self, seed: int = 0, ood_label: int = -1, id_offset: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.train = TensorDataset(images(30, generator), torch.arange(30) % 3)
        self.id_test = TensorDataset(images(16, generator), torch.arange(16) % 3 - id_offset)
        self.oods = [
            TensorDataset(images(11, generator, scale=2.5), torch.full((11,), ood_label)),
            TensorDataset(images(7, generator, shift=1.0), torch.full((7,), ood_label)),
        ]

    def train_set(self):
        return self.train

    def test_sets(self, known=True, unknown=True):
        if known and unknown:
            return [self.id_test + ood for ood in self.oods]
        if known:
            return [self.id_test]
        if unknown:
            return list(self.oods)
        raise ValueError("At least one of `known` or `unknown` must be True")


class CombinedOnly(TinyBenchmark):
    """Ignores ``known`` and ``unknown``; its combined sets share the ID part."""

    def test_sets(self, known=True, unknown=True):
        return [self.id_test + ood for ood in self.oods]


class Unshared(TinyBenchmark):
    """Combined sets only, each with its own copy of the ID data."""

    def test_sets(self, known=True, unknown=True):
        return [ConcatDataset([TensorDataset(*self.id_test.tensors), o]) for o in self.oods]


class LayerNormScore(Detector):
    """A detector on an extra layer: minus the norm of the averaged output of features.2."""

    cached_layers = {"block1": "features.2"}

    def __init__(self, model):
        self.model = model

    def predict(self, x):
        captured = {}
        handle = self.model.features[2].register_forward_hook(lambda m, i, o: captured.update(o=o))
        with torch.no_grad():
            self.model(x)
        handle.remove()
        return -captured["o"].mean(dim=(2, 3)).norm(dim=1)

    def predict_cached(self, features):
        return -features.extras["block1"].norm(dim=1)


def cached_detectors(model, benchmark):
    mahalanobis = create_detector("mahalanobis", model)
    train = extract_features(model, benchmark.train_set(), progress=False)
    mahalanobis.fit_features(train.features, train.labels)
    # pytorch-ood stores its statistics in float32 whatever the features' dtype
    mahalanobis.mu, mahalanobis.precision = mahalanobis.mu.double(), mahalanobis.precision.double()
    return [
        ("MSP", {}, MaxSoftmax(model)),
        ("Energy", {}, EnergyBased(model)),
        # ImageNet's ODIN setting: eps = 0, scored as MSP at T = 1000 on the cached logits
        ("ODIN", {"temperature": 1000.0, "eps": 0.0}, ODIN(model, temperature=1000.0, eps=0.0)),
        ("Mahalanobis", {}, mahalanobis),
        *detector_grid(
            "GradNorm", functools.partial(GradNorm, model), p=[1, 2, math.inf], temperature=[1, 8]
        ),
        ("LayerNorm", {}, LayerNormScore(model)),
    ]


def raw_detectors(model):
    return [("ODIN", {"temperature": 10.0, "eps": 0.01}, ODIN(model, temperature=10.0, eps=0.01))]


def reference(benchmark, entries):
    """Rows from detector.predict on the raw tensors, batch by batch, and paper_metrics."""

    def scores(detector, dataset):
        x = dataset.tensors[0]
        return torch.cat([detector.predict(b).detach().double() for b in x.split(BATCH)])

    rows = {}
    for method, settings, detector in entries:
        id_scores = scores(detector, benchmark.id_test)
        for name, ood in zip(benchmark.ood_names, benchmark.oods, strict=True):
            values = torch.cat([id_scores, scores(detector, ood)])
            labels = torch.cat([benchmark.id_test.tensors[1], ood.tensors[1]])
            rows[(method, _text(settings), name)] = {
                **paper_metrics(values, labels),
                "n_id": len(benchmark.id_test),
                "n_ood": len(ood),
            }
    return rows


def _text(settings):
    return ", ".join(f"{k}={float(v):g}" for k, v in settings.items())


def run(benchmark, entries, **kwargs):
    return gradood.evaluate(benchmark, entries, batch_size=BATCH, progress=False, **kwargs)


def assert_matches_reference(frame, expected):
    per_set = frame[frame.ood_data != AVERAGE]
    assert len(per_set) == len(expected)
    for _, row in per_set.iterrows():
        wanted = expected[(row.method, row.settings, row.ood_data)]
        for column, value in wanted.items():
            assert row[column] == pytest.approx(value, abs=ABS), (row.method, row.settings, column)


def test_every_row_equals_the_metrics_of_predict_on_raw_data():
    benchmark = TinyBenchmark()
    model = make_model()
    entries = cached_detectors(model, benchmark) + raw_detectors(model)
    frame = run(benchmark, entries)
    assert_matches_reference(frame, reference(benchmark, entries))
    assert list(frame.columns) == [
        "method",
        "settings",
        "temperature",
        "eps",
        "p",
        "ood_data",
        *METRICS,
        "n_id",
        "n_ood",
    ]
    gradnorm = frame[(frame.method == "GradNorm") & (frame.ood_data == "noise")]
    assert sorted(zip(gradnorm.p, gradnorm.temperature, strict=True)) == sorted(
        (p, t) for p in (1, 2, math.inf) for t in (1, 8)
    )


def test_average_rows_are_the_means_over_the_ood_sets():
    benchmark = TinyBenchmark(seed=1)
    frame = run(benchmark, cached_detectors(make_model(1), benchmark))
    for (_method, _settings), group in frame.groupby(["method", "settings"], sort=False):
        assert list(group.ood_data) == ["noise", "shifted", AVERAGE]
        per_set, average = group.iloc[:2], group.iloc[2]
        for metric in METRICS:
            assert average[metric] == pytest.approx(per_set[metric].mean(), abs=ABS)
        assert (average.n_id, average.n_ood) == (16, 11 + 7)


def test_cached_detectors_share_one_forward_pass_per_dataset(tmp_path):
    benchmark = TinyBenchmark()
    model = make_model()
    entries = cached_detectors(model, benchmark)
    CountingCNN.samples = 0
    frame = run(benchmark, entries, cache_dir=tmp_path)
    assert CountingCNN.samples == 16 + 11 + 7  # ID once, each OOD set once, for 11 detectors
    CountingCNN.samples = 0
    again = run(benchmark, entries, cache_dir=tmp_path)
    assert CountingCNN.samples == 0
    pd.testing.assert_frame_equal(frame, again, check_exact=True)
    run(benchmark, entries, cache_dir=tmp_path, recompute=True)  # e.g. after a CacheError
    assert CountingCNN.samples == 16 + 11 + 7
    CountingCNN.samples = 0
    # a raw-input detector runs on the raw data: ODIN's two forward passes per sample
    run(benchmark, entries + raw_detectors(model), cache_dir=tmp_path)
    assert CountingCNN.samples == 2 * (16 + 11 + 7)


def test_a_cached_scorer_instance_can_ask_for_raw_inputs():
    model = make_model()
    raw = LayerNormScore(model)
    raw.predict_cached = None  # e.g. a setting with input preprocessing
    CountingCNN.samples = 0
    frame = run(TinyBenchmark(), {"cached": LayerNormScore(model), "raw": raw})
    assert CountingCNN.samples == 2 * (16 + 11 + 7)
    cached, raw = (frame[frame.method == m].reset_index(drop=True) for m in ("cached", "raw"))
    pd.testing.assert_frame_equal(
        cached.drop(columns="method"), raw.drop(columns="method"), rtol=0, atol=ABS
    )


def test_benchmarks_without_separate_id_and_ood_sets():
    model = make_model()
    split = TinyBenchmark()
    entries = cached_detectors(model, split) + raw_detectors(model)
    expected = run(split, entries)
    CountingCNN.samples = 0
    pd.testing.assert_frame_equal(run(CombinedOnly(), entries), expected, check_exact=True)
    # the shared ID part of the combined sets is read once: 1 cached pass + 2 for ODIN
    assert CountingCNN.samples == 3 * (16 + 11 + 7)
    CountingCNN.samples = 0
    unshared = run(Unshared(), entries)
    assert CountingCNN.samples == 3 * ((16 + 11) + (16 + 7))
    assert_matches_reference(unshared, reference(split, entries))


def test_the_detector_specifications():
    model = make_model()
    msp, energy = MaxSoftmax(model), EnergyBased(model)
    as_mapping = run(TinyBenchmark(), {"MSP": msp, "Energy": energy})
    as_list = run(TinyBenchmark(), [msp, ("Energy", energy)])
    assert list(as_mapping.method.unique()) == ["MSP", "Energy"]
    assert list(as_list.method.unique()) == ["MaxSoftmax", "Energy"]
    assert as_list.settings.tolist() == [""] * 6
    grid = detector_grid("GradNorm", functools.partial(GradNorm, model), p=[1])
    grid = run(TinyBenchmark(), grid)
    assert grid.settings.tolist() == ["p=1"] * 3
    assert isinstance(GradNorm(model), Detector) and not isinstance(GradNorm(model), CachedScorer)


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda m: [], ValueError, "at least one detector"),
        (lambda m: MaxSoftmax(m), TypeError, "wrap a single detector"),
        (lambda m: [("MSP", MaxSoftmax(m))] * 2, ValueError, "two detectors are named MSP"),
        (lambda m: [("MSP", {"ood_data": 1}, MaxSoftmax(m))], ValueError, "clash with result"),
        (lambda m: [("MSP", "not a detector")], TypeError, "expected"),
    ],
    ids=["empty", "single", "duplicate", "reserved-setting", "not-a-detector"],
)
def test_bad_detector_specifications(build, error, message):
    with pytest.raises(error, match=message):
        run(TinyBenchmark(), build(make_model()))


@pytest.mark.parametrize(
    ("mislabelled", "message"),
    [
        (TinyBenchmark(ood_label=0), "the OOD set 'noise' of TinyBenchmark must hold only OOD"),
        (TinyBenchmark(id_offset=1), "the ID test set of TinyBenchmark must hold only ID"),
    ],
)
def test_mislabelled_benchmarks_are_named(mislabelled, message):
    with pytest.raises(ValueError, match=message):
        run(mislabelled, [MaxSoftmax(make_model())])


class OneScore(Detector):
    def predict(self, x):
        return torch.zeros(1)


def test_wrong_scores_and_unfitted_detectors_are_named():
    with pytest.raises(ValueError, match=r"Broken \(\) returned scores of shape \(1,\)"):
        run(TinyBenchmark(), {"Broken": OneScore()})
    unfitted = Mahalanobis(penultimate_encoder(make_model()))
    with pytest.raises(Exception) as caught:  # pytorch-ood's own error for a missing fit
        run(TinyBenchmark(), {"Mahalanobis": unfitted})
    assert "while scoring Mahalanobis () on 'ID'" in getattr(caught.value, "__notes__", [""])[0]


class PostProcessed(torch.nn.Module):
    """A classifier whose output is its head's output divided by 1.5."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) / 1.5


def test_logits_detectors_need_no_head():
    benchmark = TinyBenchmark()
    model = PostProcessed(make_model()).eval()
    entries = [
        ("MSP", {}, create_detector("msp", model)),
        ("Energy", {}, create_detector("energy", model)),
        ("ODIN", {}, create_detector("odin", model, preset="imagenet")),
    ]
    CountingCNN.samples = 0
    frame = run(benchmark, entries)
    assert CountingCNN.samples == 16 + 11 + 7  # one logits-only pass shared by the three
    assert_matches_reference(frame, reference(benchmark, entries))
    with pytest.raises(ValueError, match=r"not the output of its head 'net\.fc'"):
        run(benchmark, [*entries, ("GradNorm", {}, GradNorm(model))])


def test_logits_detectors_share_the_pass_of_a_head_detector():
    benchmark = TinyBenchmark()
    model = make_model()
    entries = [("MSP", {}, MaxSoftmax(model)), ("GradNorm", {}, GradNorm(model))]
    CountingCNN.samples = 0
    frame = run(benchmark, entries)
    assert CountingCNN.samples == 16 + 11 + 7
    assert_matches_reference(frame, reference(benchmark, entries))


def test_runs_on_the_device(device):
    benchmark = TinyBenchmark()
    on_cpu = run(benchmark, cached_detectors(make_model(), benchmark))
    on_device = run(benchmark, cached_detectors(make_model(), benchmark), device=device)
    # float64 on another device rounds differently (~1e-16 relative): rankings are the same
    pd.testing.assert_frame_equal(on_device, on_cpu, check_exact=False, rtol=0, atol=ABS)


def _evaluate_in_process(rank, store, cache_dir, results):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    benchmark, model = TinyBenchmark(), make_model()
    entries = cached_detectors(model, benchmark) + raw_detectors(model)
    CountingCNN.samples = 0
    frame = run(benchmark, entries, cache_dir=cache_dir, chunk_size=4)
    with open(f"{results}/rank{rank}.pkl", "wb") as file:
        pickle.dump((frame, CountingCNN.samples), file)
    # no dist.destroy_process_group(): the forked process ends with os._exit, which releases the
    # group, and on torch < 2.8 destroying a gloo group can deadlock (its destructor keeps the
    # GIL while joining a worker thread that needs it to free a finished collective's tensors)


def test_two_processes_share_the_work(tmp_path):
    """An initialized gloo group of 2 CPU processes: forward passes and raw scoring are split."""
    # fork: the children inherit the imported modules, so they start in milliseconds
    mp.start_processes(
        _evaluate_in_process,
        args=(tmp_path / "store", tmp_path / "cache", tmp_path),
        nprocs=2,
        start_method="fork",
    )
    benchmark, model = TinyBenchmark(), make_model()
    entries = cached_detectors(model, benchmark) + raw_detectors(model)
    CountingCNN.samples = 0
    single = run(benchmark, entries, chunk_size=4)
    results = []
    for rank in (0, 1):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as file:
            results.append(pickle.load(file))
    for frame, _ in results:
        # the raw-input scoring batches differ per rank (each scores a block of samples)
        pd.testing.assert_frame_equal(frame, single, check_exact=False, rtol=0, atol=ABS)
    samples = [count for _, count in results]
    assert sum(samples) == CountingCNN.samples == 3 * (16 + 11 + 7)
    assert min(samples) > 0


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bars_show_by_default_only_on_a_terminal(terminal, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)  # capsys's stderr: not one
    model = make_model()
    gradood.evaluate(TinyBenchmark(), {"MSP": MaxSoftmax(model)}, batch_size=BATCH)
    shown = capsys.readouterr().err
    assert ("forward CountingCNN" in shown) == terminal
    extract_features(model, TinyBenchmark().train_set(), desc="train pass")
    assert ("train pass" in capsys.readouterr().err) == terminal


def test_progress_bars_show_anywhere_when_asked(capsys):
    gradood.evaluate(TinyBenchmark(), {"MSP": MaxSoftmax(make_model())}, progress=True)
    assert "forward CountingCNN" in capsys.readouterr().err
