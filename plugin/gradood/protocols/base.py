"""The common shape of the GradNorm paper's protocols as pytorch-ood benchmarks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import ClassVar

from pytorch_ood.api import BenchmarkInfo, Task
from pytorch_ood.benchmark import Benchmark
from pytorch_ood.utils import ToUnknown
from torch import nn
from torch.utils.data import Dataset

from ..decoding import DECODERS, Decoding, decoding
from ..downloads import RemoteFile
from ..models.preprocessing import Preprocessing
from ..paper import GRADNORM_PAPER
from .errors import DatasetNotFoundError, MissingDataset
from .expected import ExpectedData
from .source import DataSource

__all__ = ["GradNormProtocol"]


class GradNormProtocol(Benchmark):
    """An ID test set and the OOD sets of one of the paper's tables, under a data root.

    Every dataset is checked when the benchmark is opened (the ID training set when
    :meth:`train_set` is first called): a dataset that is absent, incomplete, larger than the
    protocol's, or fails its published checksums raises :class:`DatasetNotFoundError` with its
    path, the count found and expected, and where to get it. ID samples keep their class labels
    (>= 0), OOD samples are labelled -1.

    :param root: the data root (layouts in docs/datasets.md)
    :param transform: applied to every image; defaults to :meth:`default_transform`
    :param download: download the datasets that are entirely absent (where the protocol can:
        torchvision's and pytorch-ood's sources with their published md5s, the authors'
        archives without one: their SHA-256 is recorded beside them once the dataset's counts
        check out, and checked on every later use; a download whose counts fail is removed,
        saying so), with :mod:`gradood.downloads`: resumable, a progress bar per file, every
        archive member checked before extraction. Nothing on disk is ever overwritten.
    :param expected: the counts required of each dataset; defaults to the paper's
        (:attr:`paper_expected`). Miniatures (:mod:`gradood.testing`) pass their own.
    :param decoder: how image files become inputs (:mod:`gradood.decoding`): ``"pil"`` (the
        official code's path), ``"tensor"`` (torchvision decoding and uint8 resizing, within 1
        of 255 of PIL, about 4x less CPU time) or ``"device"`` (batches decoded on the model's
        device; :func:`gradood.evaluate` takes :attr:`device_preprocessing` from the benchmark).
        Where :attr:`decoders` allows it; ``"device"`` takes no ``transform``
    """

    info = BenchmarkInfo(paper=GRADNORM_PAPER, tasks={Task.CLASSIFICATION}, ai_coded=True)

    #: the protocol's name in :func:`gradood.protocols.available_protocols`
    name: ClassVar[str]
    #: the tables of the paper whose numbers are measured on this protocol, main one first
    paper_tables: ClassVar[tuple[str, ...]]
    #: the preset of :func:`gradood.create_detector <gradood.registry.create_detector>` with the
    #: paper's settings for it
    detector_preset: ClassVar[str]
    #: the model's preprocessing (the images' size and normalization)
    preprocessing: ClassVar[Preprocessing]
    id_test_source: ClassVar[DataSource]
    id_train_source: ClassVar[DataSource]
    ood_sources: ClassVar[tuple[DataSource, ...]]
    #: the paper's count of every dataset, with torchvision's checksums verified
    paper_expected: ClassVar[ExpectedData]
    #: names of the OOD sets, in the order of the paper's table and of :meth:`test_sets`
    ood_names: ClassVar[list[str]]
    #: the file name of the protocol's model checkpoint (in the harness's checkpoint folder)
    checkpoint_file: ClassVar[str]
    #: whether the harness can train the model (``--gradood-train``: a CIFAR ResNet-20)
    trainable: ClassVar[bool] = False
    #: the decoders (:data:`gradood.decoding.DECODERS`) that compute its default transform
    decoders: ClassVar[tuple[str, ...]] = DECODERS
    #: where the model's checkpoint is published (then ``--gradood-download`` fetches it)
    checkpoint_download: ClassVar[RemoteFile | None] = None

    @classmethod
    def load_model(cls, path: str | PathLike) -> nn.Module:
        """The protocol's model from its checkpoint at ``path`` (evaluation mode)."""
        raise NotImplementedError

    @classmethod
    def architecture(cls) -> nn.Module:
        """The model's architecture, untrained (to time it before its checkpoint exists)."""
        raise NotImplementedError

    @classmethod
    def how_to_get_model(cls, path: str | PathLike) -> str:
        """What to do to have the protocol's checkpoint at ``path``."""
        raise NotImplementedError

    def __init__(
        self,
        root: str | PathLike,
        transform: Callable | None = None,
        download: bool = False,
        expected: ExpectedData | None = None,
        decoder: str = "pil",
    ):
        self.root = Path(root)
        self.expected = self.paper_expected if expected is None else expected
        self.expected.require(self.dataset_names())
        parts = self._decoding(decoder, transform)
        #: applied to every image: ``transform``, else the decoder's (``None`` for
        #: ``decoder="device"``, whose batch stage is :attr:`device_preprocessing`)
        self.transform = parts.transform if transform is None else transform
        self.loader = parts.loader
        #: the batch stage run on the device (``decoder="device"``), else ``None``
        self.device_preprocessing = parts.device_preprocessing
        self.download = download
        self.test_in = self._open(self.id_test_source, target_transform=None)
        self.test_oods = [self._open(s, target_transform=ToUnknown()) for s in self.ood_sources]
        self.ood_names = [source.name for source in self.ood_sources]
        self._train_in: Dataset | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "ood_sources" in cls.__dict__:
            cls.ood_names = [source.name for source in cls.ood_sources]

    @classmethod
    def _decoding(cls, decoder: str, transform: Callable | None) -> Decoding:
        if decoder == "pil":
            return Decoding(None, cls.default_transform(), None)
        if decoder not in cls.decoders:
            raise ValueError(
                f"{cls.__name__} reads images with decoder in {cls.decoders}, got {decoder!r}"
            )
        if decoder == "device" and transform is not None:
            raise ValueError("decoder='device' decodes on the device: it takes no transform=")
        return decoding(cls.preprocessing, decoder)

    @classmethod
    def default_transform(cls) -> Callable:
        """The paper's preprocessing for this protocol's model."""
        return cls.preprocessing.transform()

    @classmethod
    def sources(cls, include_train: bool = True) -> tuple[DataSource, ...]:
        """The protocol's datasets: ID test, the OOD sets, then (optionally) ID train."""
        train = (cls.id_train_source,) if include_train else ()
        return (cls.id_test_source, *cls.ood_sources, *train)

    @classmethod
    def dataset_names(cls) -> list[str]:
        """The names of all the protocol's datasets, the keys of ``expected``."""
        return [source.name for source in cls.sources()]

    @classmethod
    def missing(
        cls,
        root: str | PathLike,
        expected: ExpectedData | None = None,
        include_train: bool = False,
    ) -> list[MissingDataset]:
        """The datasets under ``root`` that opening the protocol would reject, with the reasons;
        empty if it opens. Runs the same checks as opening, and raises nothing for them."""
        expected = cls.paper_expected if expected is None else expected
        expected.require(cls.dataset_names())
        found = []
        for source in cls.sources(include_train):
            try:
                source.open(
                    Path(root),
                    expected[source.name],
                    transform=None,
                    target_transform=None,
                    verify_checksums=expected.verify_checksums,
                )
            except DatasetNotFoundError as error:
                found.append(error.missing)
        return found

    def train_set(self) -> Dataset:
        """The ID training set (opened and checked on the first call), with :attr:`transform`."""
        if self._train_in is None:
            self._train_in = self._open(self.id_train_source, target_transform=None)
        return self._train_in

    def test_sets(self, known: bool = True, unknown: bool = True) -> list[Dataset]:
        """Test sets, as pytorch-ood's benchmarks return them.

        :return: with ``known`` and ``unknown``, one dataset per entry of ``ood_names``: the ID
            test set followed by that OOD set. With ``unknown`` only, the OOD sets in the order
            of ``ood_names``. With ``known`` only, the ID test set, once.
        :raises ValueError: if both ``known`` and ``unknown`` are false
        """
        if known and unknown:
            return [self.test_in + ood for ood in self.test_oods]
        if known:
            return [self.test_in]
        if unknown:
            return list(self.test_oods)
        raise ValueError("At least one of `known` or `unknown` must be True")

    def _open(self, source: DataSource, target_transform: Callable | None) -> Dataset:
        was_present = source.is_present(self.root)
        if self.download and source.can_download and not was_present:
            source.download(self.root)
            source.check_download(self.root, self.expected[source.name])
        try:
            return source.open(
                self.root,
                self.expected[source.name],
                transform=self.transform,
                target_transform=target_transform,
                verify_checksums=self.expected.verify_checksums,
                loader=self.loader,
            )
        except DatasetNotFoundError as error:
            if not (self.download and was_present):
                raise
            problem = (
                f"{error.missing.problem} (download=True downloads only datasets that are "
                "entirely absent and never overwrites files: move it away to download it)"
            )
            raise DatasetNotFoundError(
                dataclasses.replace(error.missing, problem=problem)
            ) from error
