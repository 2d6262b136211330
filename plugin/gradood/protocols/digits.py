"""The bundled offline benchmark: it needs no download and runs in seconds on any CPU.

- ID: scikit-learn's bundled handwritten digits (1,797 grayscale 8 x 8 images, 10 classes),
  split with a seed into a training set (60 %) and a test set (40 %, 719 images).
- OOD "Letters" (near OOD): Latin letters in the digits' own format. Each is a glyph of one
  of the DejaVu fonts that ship with matplotlib (Sans, Sans Bold, Serif), scaled to 26 to 31 of
  32 pixels, rotated by up to 12 degrees and shifted by up to 2 pixels, rasterized on a 32 x 32
  grid (a pixel is on if its center lies inside the glyph) and counted in 4 x 4 blocks (0 to
  16), as the digits were made from 32 x 32 bitmaps; their mean intensity is close to the
  digits' (4.7 vs 4.9 of 16). Letters that are also digit shapes (O, I, l, S, Z, B, b, g,
  q, ...) are left out.
- OOD "Photo crops": square crops of scikit-learn's two bundled photographs (``china.jpg``,
  ``flower.jpg``), side 16 to 96 pixels at random positions, converted to luma (ITU-R BT.601)
  and shrunk to 8 x 8 with antialiasing: natural-image texture at the digits' scale.
- OOD "Uniform noise": pixels uniform in [0, 1] (far OOD).

Pixels are in [0, 1] (digits: value / 16) and normalized with the mean and standard deviation
of the training pixels; every OOD set has as many images as the ID test set. Everything is
drawn from ``seed``, so the same seed gives the same tensors on every machine.

``python -m gradood.protocols.digits --out <file>`` trains the bundled classifier's weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from pytorch_ood.benchmark import Benchmark
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

from ..files import atomic_torch_save
from ..models.digits import file_sha256, train_digits_cnn

__all__ = ["DigitsBenchmark"]

_TRAIN_FRACTION = 0.6
_CROP_SIDES = (16, 96)
#: letters whose glyphs are not also digit shapes
_LETTERS = "ACEFHJKLMNPRTUVWXYacdefhkmnrtuvwxy"
_FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf")


def _digits(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).float()[:, None]
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_train = round(_TRAIN_FRACTION * len(labels))
    train, test = order[:n_train], order[n_train:]
    return images[train], labels[train], images[test], labels[test]


def _photo_crops(count: int, seed: int) -> Tensor:
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [
        torch.from_numpy(image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        / 255.0
        for image in load_sample_images().images
    ]
    crops = []
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(_CROP_SIDES[0], _CROP_SIDES[1] + 1))
        top = int(rng.integers(photo.shape[0] - side + 1))
        left = int(rng.integers(photo.shape[1] - side + 1))
        crop = photo[top : top + side, left : left + side][None, None]
        crops.append(F.interpolate(crop, size=(8, 8), mode="bilinear", antialias=True)[0])
    return torch.stack(crops).clamp_(0.0, 1.0)


def _glyph_paths() -> list:
    import matplotlib
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [
        TextPath((0, 0), letter, size=1, prop=FontProperties(fname=fonts / name))
        for name in _FONT_FILES
        for letter in _LETTERS
    ]


def _rasterize(glyph, rng: np.random.Generator) -> np.ndarray:
    """One glyph as an 8 x 8 image of on-pixel counts in 4 x 4 blocks of a 32 x 32 bitmap."""
    from matplotlib.transforms import Affine2D

    box = glyph.get_extents()
    scale = rng.uniform(26, 31) / max(box.height, box.width)
    placement = (
        Affine2D()
        .translate(-(box.x0 + box.x1) / 2, -(box.y0 + box.y1) / 2)
        .scale(scale)
        .rotate_deg(rng.uniform(-12, 12))
        .translate(16 + rng.uniform(-2, 2), 16 + rng.uniform(-2, 2))
    )
    rows, columns = np.mgrid[0:32, 0:32]
    centers = np.stack([columns.ravel() + 0.5, 31.5 - rows.ravel()], axis=1)
    inside = glyph.transformed(placement).contains_points(centers).reshape(32, 32)
    return inside.reshape(8, 4, 8, 4).sum(axis=(1, 3))


def _letters(count: int, seed: int) -> Tensor:
    rng = np.random.default_rng(seed)
    glyphs = _glyph_paths()
    images = [_rasterize(glyphs[int(rng.integers(len(glyphs)))], rng) for _ in range(count)]
    return torch.from_numpy(np.stack(images) / 16.0).float()[:, None]


def _uniform_noise(count: int, seed: int) -> Tensor:
    return torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


class DigitsBenchmark(Benchmark):
    """scikit-learn's digits vs. letters, photo crops and uniform noise, from near to far OOD
    (see the module docstring).

    :param seed: draws the ID split, the crops and the noise
    """

    ood_names = ["Letters", "Photo crops", "Uniform noise"]

    def __init__(self, seed: int = 0):
        x_train, y_train, x_test, y_test = _digits(seed)
        n = len(x_test)
        ood = [_letters(n, seed + 3), _photo_crops(n, seed + 1), _uniform_noise(n, seed + 2)]
        self.mean = float(x_train.mean())
        self.std = float(x_train.std())
        self._train = TensorDataset(self.normalize(x_train), y_train)
        self._test_in = TensorDataset(self.normalize(x_test), y_test)
        self._test_oods = [
            TensorDataset(self.normalize(x), torch.full((len(x),), -1, dtype=torch.long))
            for x in ood
        ]

    def normalize(self, pixels: Tensor) -> Tensor:
        """Pixels in [0, 1] to model inputs."""
        return (pixels - self.mean) / self.std

    def train_set(self) -> Dataset:
        """The ID training split (60 % of the digits), labels 0 to 9."""
        return self._train

    def test_sets(self, known: bool = True, unknown: bool = True) -> list[Dataset]:
        """As pytorch-ood's benchmarks: with ``known`` and ``unknown``, the ID test set
        followed by each OOD set; with one of them, the ID test set or the OOD sets alone."""
        if known and unknown:
            return [ConcatDataset([self._test_in, ood]) for ood in self._test_oods]
        if known:
            return [self._test_in]
        if unknown:
            return list(self._test_oods)
        raise ValueError("At least one of `known` or `unknown` must be True")


def main(argv: list[str] | None = None) -> None:
    """Train the bundled classifier's weights (:func:`gradood.models.digits.train_digits_cnn`)
    on this benchmark's training split and write them (``--out``)."""
    parser = argparse.ArgumentParser(description="train the bundled benchmark's digits CNN")
    parser.add_argument("--out", type=Path, required=True, help="the weights file to write")
    parser.add_argument("--seed", type=int, default=0, help="split, initialization (default 0)")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists: choose another --out (nothing is overwritten)")
    model = train_digits_cnn(*DigitsBenchmark(seed=args.seed).train_set().tensors, seed=args.seed)
    atomic_torch_save(args.out, model.state_dict())
    print(f"{args.out}: SHA-256 {file_sha256(args.out)}")


if __name__ == "__main__":
    main()
