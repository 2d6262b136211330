"""The paper's CIFAR-10 and CIFAR-100 protocols (Table 6).

Layout under the data root (torchvision's and pytorch-ood's own places)::

    cifar-10-batches-py/                      CIFAR-10 (torchvision), test 10,000, train 50,000
    cifar-100-python/                         CIFAR-100 (torchvision), test 10,000, train 50,000
    svhn/test_32x32.mat                       SVHN test, 26,032 images (torchvision)
    LSUN/test/*.jpg                           LSUN crop, 10,000 images (ODIN's LSUN.tar.gz)
    places365/categories_places365.txt,       Places365-Standard test set, 328,500 images
      places365_test.txt, test_256/*.jpg        (torchvision), of which 10,000 are sampled
    dtd/images/<category>/*.jpg               Textures (DTD), 5,640 images in 47 folders

Preprocessing (:func:`~gradood.protocols.cifar_transform`): the shorter side resized to 32 and a
32 x 32 center crop, then the CIFAR ResNet-20's normalization. The paper does not state how OOD
images larger than 32 x 32 are reduced; this is the common practice: the energy score's code does
it for Textures and Places365 (and feeds LSUN (crop) as stored), DICE's (from the paper's group)
for every OOD set. It is the identity on 32 x 32 images (CIFAR, SVHN) and equals a plain 32 x 32
resize on square ones (Places365's 256 x 256); it differs from ``CIFAR_RESNET20.transform()``
(which squeezes the aspect ratio) only on non-square images, i.e. on Textures.
"""

from __future__ import annotations

import torchvision.transforms as T
from pytorch_ood.dataset.img import LSUNCrop, Textures
from torchvision.datasets import CIFAR10, CIFAR100

from ..models.preprocessing import CIFAR_RESNET20
from ..models.resnet20 import load_resnet20, resnet20
from .archives import Archive
from .base import GradNormProtocol
from .expected import Expected, ExpectedData
from .image_folder import ImageFolderSource
from .places365 import Places365SampleSource
from .torchvision_sets import CifarSource, SvhnSource

__all__ = ["CIFAR10GradNorm", "CIFAR100GradNorm", "cifar_transform"]


def cifar_transform() -> T.Compose:
    """Shorter side to 32, center crop 32 x 32, then ``CIFAR_RESNET20.transform()``."""
    height, width = CIFAR_RESNET20.size
    return T.Compose(
        [T.Resize(min(height, width)), T.CenterCrop((height, width)), CIFAR_RESNET20.transform()]
    )


_OOD_SOURCES = (
    SvhnSource("SVHN", "test"),
    ImageFolderSource(
        "LSUN (crop)",
        "LSUN",
        f"ODIN's release {LSUNCrop.url} (md5 {LSUNCrop.tgz_md5}), extracted into the data root "
        "(LSUN/test/), e.g. by pytorch_ood.dataset.img.LSUNCrop(root, download=True)",
        archive=Archive(LSUNCrop.url, LSUNCrop.filename, LSUNCrop.tgz_md5, member="LSUN"),
    ),
    Places365SampleSource("Places365"),
    ImageFolderSource(
        "Textures",
        "dtd/images",
        f"DTD {Textures.url} (md5 {Textures.tgz_md5}), extracted into the data root (dtd/images/),"
        " e.g. by pytorch_ood.dataset.img.Textures(root, download=True)",
        archive=Archive(Textures.url, Textures.filename, Textures.tgz_md5, member="dtd"),
        installed_as="dtd",
    ),
)

_OOD_EXPECTED = {
    "SVHN": Expected(26_032),
    "LSUN (crop)": Expected(10_000),
    "Places365": Expected(10_000, drawn_from=328_500),
    "Textures": Expected(5_640, classes=47),
}


class _CifarProtocol(GradNormProtocol):
    preprocessing = CIFAR_RESNET20
    ood_sources = _OOD_SOURCES

    @classmethod
    def load_model(cls, path):
        """A ResNet-20 trained by the paper's recipe (:func:`gradood.models.load_resnet20`)."""
        return load_resnet20(path).eval()

    trainable = True

    @classmethod
    def architecture(cls):
        """A freshly initialized ResNet-20 with the protocol's classes."""
        return resnet20(cls.paper_expected[cls.id_test_source.name].classes)

    @classmethod
    def how_to_get_model(cls, path) -> str:
        return (
            f"train it: python -m gradood.models.train --dataset {cls.name} "
            f"--data-root <data root> --out {path}"
        )

    #: its transform crops non-square images, which only the PIL path does
    decoders = ("pil",)

    @classmethod
    def default_transform(cls) -> T.Compose:
        """:func:`cifar_transform`."""
        return cifar_transform()


class CIFAR10GradNorm(_CifarProtocol):
    """CIFAR-10 test set vs. SVHN, LSUN (crop), Places365 and Textures (Table 6);
    :meth:`~gradood.protocols.GradNormProtocol.train_set` is CIFAR-10's training set."""

    name = "cifar10"
    detector_preset = "cifar10"
    checkpoint_file = "resnet20-cifar10.pt"
    paper_tables = ("Table 6",)
    id_test_source = CifarSource("CIFAR-10 test", CIFAR10, train=False)
    id_train_source = CifarSource("CIFAR-10 train", CIFAR10, train=True)
    paper_expected = ExpectedData(
        {
            "CIFAR-10 test": Expected(10_000, classes=10),
            "CIFAR-10 train": Expected(50_000, classes=10),
            **_OOD_EXPECTED,
        }
    )


class CIFAR100GradNorm(_CifarProtocol):
    """CIFAR-100 test set vs. SVHN, LSUN (crop), Places365 and Textures (Table 6);
    :meth:`~gradood.protocols.GradNormProtocol.train_set` is CIFAR-100's training set."""

    name = "cifar100"
    detector_preset = "cifar100"
    checkpoint_file = "resnet20-cifar100.pt"
    paper_tables = ("Table 6",)
    id_test_source = CifarSource("CIFAR-100 test", CIFAR100, train=False)
    id_train_source = CifarSource("CIFAR-100 train", CIFAR100, train=True)
    paper_expected = ExpectedData(
        {
            "CIFAR-100 test": Expected(10_000, classes=100),
            "CIFAR-100 train": Expected(50_000, classes=100),
            **_OOD_EXPECTED,
        }
    )
