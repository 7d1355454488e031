"""Checks that a file is a real, readable PNG image."""

from __future__ import annotations

from pathlib import Path

from matplotlib import image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    # Something was drawn: not a single flat colour.
    assert pixels.std() > 0.01
