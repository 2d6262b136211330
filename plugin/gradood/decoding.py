"""Image files to model inputs by three interchangeable paths, from exact to fastest.

Every path computes the same preprocessing (:class:`gradood.models.preprocessing.Preprocessing`):
decode to RGB, resize to ``size`` (bilinear, antialiased when shrinking), scale to [0, 1],
then :math:`(x - \\mathrm{mean}) / \\mathrm{std}` per channel.

- ``"pil"``: PIL decodes and resizes; the official code's path (``Preprocessing.transform()``).
- ``"tensor"``: torchvision decodes JPEGs into a uint8 tensor (libjpeg-turbo, the same decoder
  as PIL: identical pixels) and resizes it as uint8 (torchvision's vectorized kernel) in the
  DataLoader workers. About 4x less CPU time per ImageNet image than ``"pil"``. Other formats
  (PNG of any bit depth or mode, GIF, ...) are decoded by PIL, as the ``"pil"`` path reads them:
  torchvision returns 16-bit PNGs as uint16, and its PNG decoder ends the process (libpng
  error, then a segmentation fault, torchvision 0.29) on a PNG with too little image data.
- ``"device"``: the workers only read the file's bytes; each batch is decoded on the model's
  device (``torchvision.io.decode_jpeg(..., device="cuda")``: nvJPEG, batched), resized and
  normalized there (:class:`DevicePreprocessing`). Files that are not JPEGs, or that the device
  decoder rejects (e.g. CMYK JPEGs on some nvJPEG versions), are decoded on the CPU.

**Decompression bombs.** Every path reads a file's header with PIL before any decoder runs:
an image of more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (PIL's own limit) is refused
there, naming the file, as the ``"pil"`` path refuses it.

**Tolerance.** Both tensor paths resize on uint8 values rounded once, as PIL does, but with
another kernel: a resized pixel value differs from PIL's by at most 1 of 255 (after
normalization, :math:`1 / (255\\,\\mathrm{std})`). On the CPU the decoders are identical, so
that is the whole difference. nvJPEG's inverse DCT and chroma upsampling are not
libjpeg-turbo's: on a GPU, pixel values near sharp colour edges differ by more; the mean
absolute difference is stated to be below :data:`DEVICE_MEAN_LEVELS` (2 of 255), which
``benchmarks/test_input_pipeline.py`` checks on CUDA.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.io
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import pil_to_tensor
from torchvision.transforms.v2.functional import resize

from .models.preprocessing import Preprocessing

__all__ = [
    "DECODERS",
    "DEVICE_MEAN_LEVELS",
    "Decoding",
    "DevicePreprocessing",
    "EncodedImage",
    "TensorPreprocessing",
    "check_header",
    "decode_rgb",
    "decoding",
    "read_encoded",
    "read_rgb",
]

#: the decoding paths, from exact (the official code's) to fastest
DECODERS = ("pil", "tensor", "device")
#: the stated bound of the mean absolute difference (in pixel levels of 255) of photos decoded
#: by nvJPEG and resized from PIL's: torchvision's own bound for nvJPEG against libjpeg-turbo
#: (2), the resize's rounding adding far less than a level on average; on the CPU, every
#: value is within 1
DEVICE_MEAN_LEVELS = 2.0
_JPEG_START = (0xFF, 0xD8, 0xFF)
# torchvision 0.29 deprecates its image decoders (for TorchCodec) and warns on every call
_DEPRECATED = "The image decoding and encoding capabilities of TorchVision are deprecated"
# decode_jpeg takes a list of images (one batched nvJPEG call) from torchvision 0.19 on
_BATCHED_DECODING = tuple(int(part) for part in torchvision.__version__.split(".")[:2]) >= (0, 19)


def _has_torchvision_decoders() -> bool:
    return hasattr(torchvision.io, "decode_jpeg") and hasattr(torchvision.io, "decode_image")


@contextmanager
def _torchvision_decoding() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED, category=DeprecationWarning)
        yield


def _decode_jpeg(*args: Any, **kwargs: Any) -> Any:
    with _torchvision_decoding():
        return torchvision.io.decode_jpeg(*args, **kwargs)


def _decode_image(*args: Any, **kwargs: Any) -> Any:
    with _torchvision_decoding():
        return torchvision.io.decode_image(*args, **kwargs)


@dataclass(frozen=True)
class EncodedImage:
    """The bytes of an image file (a 1-D uint8 tensor) and the file's path, for messages."""

    data: Tensor
    path: str


def _read_bytes(path: str | os.PathLike) -> EncodedImage:
    """The file's bytes, unchecked."""
    with open(path, "rb") as file:
        data = bytearray(file.read())
    encoded = (
        torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    )
    return EncodedImage(encoded, os.fspath(path))


def read_encoded(path: str | os.PathLike) -> EncodedImage:
    """The file's bytes, undecoded, once PIL has read its header: the loader of the
    ``"device"`` path.

    :raises ValueError: naming the file, if PIL cannot read its header or it is a decompression
        bomb (:func:`check_header`)
    """
    image = _read_bytes(path)
    check_header(image)
    return image


@contextmanager
def _opened(image: EncodedImage) -> Iterator[Image.Image]:
    """PIL's image of the bytes, its header read and checked, no pixel decoded yet.

    :raises ValueError: as :func:`check_header`
    """
    try:
        opened = Image.open(io.BytesIO(image.data.numpy().tobytes()))
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... on bad bytes
        raise _cannot_decode(image, error) from error
    with opened:
        yield opened


def check_header(image: EncodedImage) -> None:
    """Read the image's header with PIL, decoding no pixel.

    :raises ValueError: naming the file, if PIL cannot identify it, or if it has more than
        twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (PIL's ``DecompressionBombError``; between
        once and twice, PIL's ``DecompressionBombWarning``, as on the ``"pil"`` path)
    """
    with _opened(image):
        pass


def read_rgb(path: str | os.PathLike) -> Tensor:
    """The file decoded to a 3 x H x W uint8 RGB tensor on the CPU: the loader of ``"tensor"``.

    :raises ValueError: naming the file, as :func:`read_encoded` and :func:`decode_rgb`
    """
    return _decode_on_cpu(_read_bytes(path))


def decode_rgb(image: EncodedImage, device: torch.device | str = "cpu") -> Tensor:
    """One encoded image as a 3 x H x W uint8 RGB tensor on ``device``.

    JPEGs are decoded on ``device``; JPEGs the device's decoder rejects by torchvision on the
    CPU, after :func:`check_header`; other formats, and what torchvision rejects, by PIL (what
    neither reads raises ``ValueError`` naming the file).
    """
    device = torch.device(device)
    if device.type == "cuda" and _is_jpeg(image.data):
        try:
            return _decode_jpeg(image.data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass
    return _decode_on_cpu(image).to(device)


def _decode_on_cpu(image: EncodedImage) -> Tensor:
    """The image decoded on the CPU, its header checked once (PIL opens it once)."""
    with _opened(image) as opened:
        if _is_jpeg(image.data):
            try:  # torchvision's JPEG decoder returns uint8 (only 16-bit PNGs give uint16)
                return _decode_image(image.data, mode=ImageReadMode.RGB)
            except RuntimeError:
                pass
        try:
            return pil_to_tensor(opened.convert("RGB"))
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... on bad bytes
            raise _cannot_decode(image, error) from error


def _cannot_decode(image: EncodedImage, error: Exception) -> ValueError:
    return ValueError(f"cannot decode image '{image.path}': {type(error).__name__}: {error}")


def _is_jpeg(data: Tensor) -> bool:
    return data.numel() > 3 and tuple(data[:3].tolist()) == _JPEG_START


def _resize_and_normalize(images: Tensor, preprocessing: Preprocessing) -> Tensor:
    """uint8 N x 3 x H x W (or 3 x H x W) to the model's float input."""
    resized = resize(images, list(preprocessing.size), InterpolationMode.BILINEAR, antialias=True)
    mean = torch.tensor(preprocessing.mean, device=images.device).view(3, 1, 1)
    std = torch.tensor(preprocessing.std, device=images.device).view(3, 1, 1)
    return (resized.float() / 255 - mean) / std


@dataclass(frozen=True)
class TensorPreprocessing:
    """The per-sample transform of the ``"tensor"`` path: a uint8 image tensor (from
    :func:`read_rgb`) or a PIL image in, the model's normalized float input out."""

    preprocessing: Preprocessing

    def __call__(self, image: Tensor | Image.Image) -> Tensor:
        if isinstance(image, Image.Image):
            image = pil_to_tensor(image.convert("RGB"))
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"expected a 3 x H x W uint8 RGB image, got {image.dtype} of shape "
                f"{tuple(image.shape)}"
            )
        return _resize_and_normalize(image, self.preprocessing)


@dataclass(frozen=True)
class DevicePreprocessing:
    """The batch stage of the ``"device"`` path: encoded images (from :func:`read_encoded`) to
    the model's normalized float input, decoded and resized on the model's device.

    Its :meth:`collate` is the DataLoader's ``collate_fn`` (it keeps the encoded images as a
    list); ``extract_features(..., device_preprocessing=...)`` and ``evaluate`` call it.
    """

    preprocessing: Preprocessing

    @staticmethod
    def collate(batch: Sequence[tuple[EncodedImage, Any]]) -> tuple[list[EncodedImage], Tensor]:
        """A batch of ``(encoded image, label)`` samples as the list of the images and a tensor
        of the labels.

        :raises ValueError: if a sample is not an encoded image (the dataset's loader is not
            :func:`read_encoded`)
        """
        images = [image for image, _ in batch]
        wrong = [type(image).__name__ for image in images if not isinstance(image, EncodedImage)]
        if wrong:
            raise ValueError(
                f"device decoding needs encoded images (gradood.decoding.read_encoded as the "
                f"dataset's loader), got {wrong[0]}"
            )
        return images, torch.as_tensor([label for _, label in batch])

    def __call__(self, images: Sequence[EncodedImage], device: torch.device | str) -> Tensor:
        decoded = _decode_batch(list(images), torch.device(device))
        return torch.stack([_resize_and_normalize(image, self.preprocessing) for image in decoded])


def _decode_batch(images: list[EncodedImage], device: torch.device) -> list[Tensor]:
    """All images on ``device``; JPEGs in one batched call where the device decodes them."""
    if device.type != "cuda" or not _BATCHED_DECODING:
        return [decode_rgb(image, device) for image in images]
    jpegs = [index for index, image in enumerate(images) if _is_jpeg(image.data)]
    decoded: list[Tensor | None] = [None] * len(images)
    try:
        if not jpegs:
            raise TypeError("no JPEG in the batch")
        batch = _decode_jpeg(
            [images[index].data for index in jpegs], mode=ImageReadMode.RGB, device=device
        )
        for index, image in zip(jpegs, batch, strict=True):
            decoded[index] = image
    except (RuntimeError, TypeError):  # a file it rejects: each image on its own
        pass
    return [
        image if image is not None else decode_rgb(images[index], device)
        for index, image in enumerate(decoded)
    ]


@dataclass(frozen=True)
class Decoding:
    """One decoding path for a model's preprocessing: the dataset's file ``loader`` (``None``:
    the dataset's own, PIL), its per-sample ``transform``, and the batch stage run on the device
    (``None``: inputs arrive ready)."""

    loader: Callable[[str], Any] | None
    transform: Callable | None
    device_preprocessing: DevicePreprocessing | None


def decoding(preprocessing: Preprocessing, decoder: str = "pil") -> Decoding:
    """The parts of the ``decoder`` path (one of :data:`DECODERS`) for ``preprocessing``."""
    if decoder == "pil":
        return Decoding(None, preprocessing.transform(), None)
    if decoder in DECODERS and not _has_torchvision_decoders():
        raise ValueError(
            f"decoder={decoder!r} needs torchvision's image decoders, which torchvision "
            f"{torchvision.__version__} does not have; use decoder='pil'"
        )
    if decoder == "tensor":
        return Decoding(read_rgb, TensorPreprocessing(preprocessing), None)
    if decoder == "device":
        return Decoding(read_encoded, None, DevicePreprocessing(preprocessing))
    raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
