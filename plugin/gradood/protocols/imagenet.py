"""The paper's ImageNet protocol (Table 1; Tables 7 to 9 use it too).

Layout under the data root, as the official code reads it (each folder an ``ImageFolder``)::

    id_data/ILSVRC-2012/val/<wnid>/*.JPEG     50,000 images in 1,000 class folders
    id_data/ILSVRC-2012/train/<wnid>/*.JPEG   1,281,167 images (only for train_set())
    ood_data/iNaturalist/...                  10,000 images  (authors' iNaturalist.tar.gz)
    ood_data/SUN/...                          10,000 images  (authors' SUN.tar.gz)
    ood_data/Places/...                       10,000 images  (authors' Places.tar.gz)
    ood_data/Textures/<category>/*.jpg        5,640 images in 47 folders (DTD's dtd/images)

ID labels are the indices of the sorted wnid folders (``ImageFolder``'s order), which is not
the class order of the authors' BiT checkpoint: OOD scores do not depend on it, accuracies do.
"""

from __future__ import annotations

from pytorch_ood.dataset.img import Textures

from ..downloads import RemoteFile
from ..models.bit import BIT_S_R101X1_URL, bit_s_r101x1
from ..models.preprocessing import BIT_S_R101X1
from .archives import Archive
from .base import GradNormProtocol
from .expected import Expected, ExpectedData
from .image_folder import ImageFolderSource

__all__ = ["ImageNetGradNorm"]

#: where the authors publish their 10,000-image subsets (no checksums are published)
AUTHORS_OOD_URL = "http://pages.cs.wisc.edu/~huangrui/imagenet_ood_dataset/"

_IMAGENET = (
    "ImageNet-1k (ILSVRC 2012) from https://image-net.org (login required; never downloaded): "
    "put ILSVRC2012_img_{split}.tar and ILSVRC2012_devkit_t12.tar.gz in "
    "<root>/id_data/ILSVRC-2012 and run torchvision.datasets.ImageNet('<root>/id_data/"
    "ILSVRC-2012', split='{split}') once, which sorts the images into {split}/<wnid>/"
)


def _authors_subset(name: str) -> ImageFolderSource:
    url = f"{AUTHORS_OOD_URL}{name}.tar.gz"
    return ImageFolderSource(
        name,
        f"ood_data/{name}",
        f"the authors' subset {url} (no checksum is published; the image count is the check): "
        f"tar -xzf {name}.tar.gz -C <root>/ood_data",
        archive=Archive(url, f"{name}.tar.gz", md5=None, member=name),
    )


class ImageNetGradNorm(GradNormProtocol):
    """ImageNet-1k validation set vs. iNaturalist, SUN, Places and Textures, preprocessed for
    BiT-S-R101x1 (resized to 480 x 480, mean = std = 0.5), as in the official code.

    :meth:`~gradood.protocols.GradNormProtocol.train_set` is ImageNet's training set under
    ``id_data/ILSVRC-2012/train``: not part of the paper's evaluation, but where the official code
    fits Mahalanobis's class means. It is checked (1,281,167 images in 1,000 class folders) on the
    first call only, and raises :class:`~gradood.protocols.DatasetNotFoundError` naming that path if
    it is absent.
    """

    name = "imagenet"
    paper_tables = ("Table 1", "Table 7", "Table 8", "Table 9")
    detector_preset = "imagenet"
    preprocessing = BIT_S_R101X1
    checkpoint_file = "BiT-S-R101x1-flat-finetune.pth.tar"
    checkpoint_download = RemoteFile(BIT_S_R101X1_URL)  # no checksum is published

    @classmethod
    def load_model(cls, path):
        """The authors' BiT-S-R101x1 (:func:`gradood.models.bit_s_r101x1`)."""
        return bit_s_r101x1(path).eval()

    @classmethod
    def architecture(cls):
        """BiT-S-R101x1, untrained (timm's architecture)."""
        return bit_s_r101x1()

    @classmethod
    def how_to_get_model(cls, path) -> str:
        return f"download the authors' fine-tuned checkpoint {BIT_S_R101X1_URL} to {path}"

    id_test_source = ImageFolderSource(
        "ImageNet-1k val", "id_data/ILSVRC-2012/val", _IMAGENET.format(split="val")
    )
    id_train_source = ImageFolderSource(
        "ImageNet-1k train", "id_data/ILSVRC-2012/train", _IMAGENET.format(split="train")
    )
    ood_sources = (
        _authors_subset("iNaturalist"),
        _authors_subset("SUN"),
        _authors_subset("Places"),
        ImageFolderSource(
            "Textures",
            "ood_data/Textures",
            f"DTD {Textures.url} (md5 {Textures.tgz_md5}); move its dtd/images folder to "
            "<root>/ood_data/Textures",
            archive=Archive(Textures.url, Textures.filename, Textures.tgz_md5, member="dtd/images"),
        ),
    )
    paper_expected = ExpectedData(
        {
            "ImageNet-1k val": Expected(50_000, classes=1_000),
            "ImageNet-1k train": Expected(1_281_167, classes=1_000),
            "iNaturalist": Expected(10_000),
            "SUN": Expected(10_000),
            "Places": Expected(10_000),
            "Textures": Expected(5_640, classes=47),
        }
    )
