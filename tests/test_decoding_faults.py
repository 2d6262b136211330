"""Image files no decoding path should trust: every PNG mode reads as PIL's path reads it, and a
decompression bomb (a header claiming 20000 x 20000 pixels) is an ``ImageReadError`` naming the
file on every path, never a crash of the process (torchvision 0.29's PNG decoder ends it with a
segmentation fault on such a file: those checks run in a subprocess)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradood.decoding import DevicePreprocessing, read_encoded, read_rgb
from gradood.models.preprocessing import Preprocessing

SMALL = Preprocessing(size=(6, 5), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (PIL writes no 16-bit RGB), every chunk's CRC valid."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def _pngs(folder: Path) -> list[Path]:
    """One small PNG per mode: 1-bit, grey, grey + alpha, palette (with and without a
    transparent entry), RGBA, 16-bit grey and 16-bit RGB."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    images = {
        "bw": Image.fromarray(pixels[..., 0] > 127),
        "grey": Image.fromarray(pixels[..., 0], "L"),
        "grey-alpha": Image.fromarray(pixels[..., :2], "LA"),
        "palette": Image.fromarray(pixels[..., :3]).convert("P", palette=Image.ADAPTIVE),
        "rgba": Image.fromarray(pixels, "RGBA"),
        "grey16": Image.fromarray(rng.integers(0, 65536, (5, 7), dtype=np.uint16)),
    }
    paths = []
    for name, image in images.items():
        paths.append(folder / f"{name}.png")
        image.save(paths[-1])
    image = images["palette"]
    paths.append(folder / "palette-transparent.png")
    image.save(paths[-1], transparency=0)
    rows = b"".join(
        b"\x00" + rng.integers(0, 65536, 7 * 3, dtype=np.uint16).astype(">u2").tobytes()
        for _ in range(5)
    )
    paths.append(folder / "rgb16.png")
    paths[-1].write_bytes(_png(7, 5, 16, 2, rows))
    return paths


def test_every_png_mode_reads_as_pils_path_reads_it(tmp_path):
    """Pixel for pixel PIL's ``convert("RGB")`` (16-bit: its reduction to 8 bits), on the
    tensor path and on the device path's CPU decoding."""
    paths = _pngs(tmp_path)
    device = DevicePreprocessing(SMALL)([read_encoded(path) for path in paths], "cpu")
    assert device.shape == (len(paths), 3, *SMALL.size)
    for path in paths:
        with Image.open(path) as image:
            reference = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        decoded = read_rgb(path)
        assert decoded.dtype == torch.uint8, path.name
        assert torch.equal(decoded, reference), path.name


def _bombs(folder: Path) -> list[Path]:
    """A PNG and a JPEG whose headers claim 20000 x 20000 pixels (4e8, over twice PIL's
    default limit of 89,478,485), holding one row of pixels."""
    png = folder / "bomb.png"
    png.write_bytes(_png(20000, 20000, 8, 2, b"\x00" * (3 * 20000 + 1)))
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")  # start of frame: length (2), precision (1), height, width
    data[frame + 5 : frame + 9] = struct.pack(">HH", 20000, 20000)
    jpeg = folder / "bomb.jpg"
    jpeg.write_bytes(bytes(data))
    return [png, jpeg]


_PROBE = textwrap.dedent(
    """
    import sys
    from gradood.decoding import DevicePreprocessing, read_encoded, read_rgb
    from gradood.models.preprocessing import Preprocessing
    from gradood.protocols.errors import read_image

    stage = DevicePreprocessing(Preprocessing((6, 5), (0.5,) * 3, (0.5,) * 3))
    for path in sys.argv[1:]:
        for name, loader in [
            ("tensor", read_rgb),
            ("device", lambda p: stage([read_encoded(p)], "cpu")),
        ]:
            try:
                read_image(loader, path, "bombs", 0)
                print(name, "read", path)
            except Exception as error:
                print(name, type(error).__name__, error)
    """
)


def test_a_decompression_bomb_is_refused_by_its_header_naming_the_file(tmp_path):
    paths = _bombs(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"the process ended with {done.returncode}: {done.stderr}"
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout
    for line, path in zip(lines, [p for p in paths for _ in range(2)], strict=True):
        assert "ImageReadError" in line and f"'{path}'" in line, line
        assert "DecompressionBombError" in line and "400000000 pixels" in line, line


@pytest.mark.parametrize("loader", [read_rgb, read_encoded])
def test_a_header_pil_cannot_read_is_an_error_naming_the_file(tmp_path, loader):
    path = tmp_path / "not-an-image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ValueError, match=r"cannot decode image '.*not-an-image\.png'"):
        loader(path)
