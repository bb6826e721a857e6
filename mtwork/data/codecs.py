"""Image decoding for the training loaders: JPEG through libjpeg-turbo (simplejpeg), at full or reduced
size, and 8-bit greyscale PNG label masks through libspng (pyspng).

Decoding is the largest single cost of a loader worker at the paper's input size (docs/benchmarks.md,
"Loader"). simplejpeg wraps libjpeg-turbo's TurboJPEG API and writes the pixels straight into a numpy
array, where PIL decodes into its own buffer and ``np.asarray`` copies it out again (``tobytes``). On a
1280x720 SynthDrive frame, one thread, 2026-12-06: 3.0 ms instead of PIL's 4.3 ms at full size, 2.5 ms
at half size. The pixels are PIL's: both run libjpeg-turbo's default (accurate integer) DCT and fancy
upsampling, and a test compares the two on generated files, full and reduced.

Chosen over torchvision.io.decode_jpeg (3.3 ms), whose image decoders torchvision 0.29 deprecates, and
which cannot decode at reduced size.

Label masks (BDD100K's semseg and drivable PNGs, 8-bit greyscale) are the next cost: two per sample
when an image carries both. libspng decodes them straight into a numpy array, where PIL decodes into
its own buffer and ``np.asarray`` copies it out; on SynthDrive's 1280x720 masks, one thread,
2026-12-06: 2.1 instead of 2.7 ms (semseg), 0.9 instead of 1.9 ms (drivable). The values are the
file's, as PIL reads them (tested). Only 8-bit greyscale goes this way: pyspng turns palette images
into RGB (PIL keeps their indices, which are the label ids) and 16-bit ones into grey + alpha, so
``decode_grey8_png`` answers None for those and the caller reads them with PIL.
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Optional

import numpy as np

#: Scale denominators libjpeg decodes to directly (DCT scaling) that keep the frame exact, largest first.
JPEG_REDUCTIONS = (8, 4, 2)


def decode_jpeg_rgb(data: bytes, size: tuple, reduction: int = 1) -> np.ndarray:
    """JPEG bytes of an image of ``size`` (H, W) -> (H/r, W/r, 3) uint8 RGB, r = ``reduction``.

    ``reduction`` must be 1 or one of ``JPEG_REDUCTIONS`` dividing both sides: libjpeg then scales the
    DCT by exactly 1/r, so reduced pixel j covers full pixels r*j .. r*j+r-1. Greyscale and CMYK files
    come out as RGB. Raises ``ValueError`` with the decoder's reason on corrupt or truncated data,
    and on a decoded size other than the one asked for (the callers name the file).
    """
    import simplejpeg

    height, width = int(size[0]), int(size[1])
    if reduction != 1 and (reduction not in JPEG_REDUCTIONS or height % reduction or width % reduction):
        raise ValueError(f"reduction {reduction} does not divide the image size {height}x{width} exactly")
    # TurboJPEG picks the smallest of its scaling factors that keeps both minima: 1/r itself.
    image = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=height // reduction, min_width=width // reduction)
    if image.shape != (height // reduction, width // reduction, 3):
        raise ValueError(f"decoded at {image.shape[0]}x{image.shape[1]}, expected {height}x{width} / {reduction}")
    return image


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREYSCALE = 0  # PNG colour type


class PngHeader(NamedTuple):
    """A PNG's IHDR: size in pixels, bits per sample, colour type (0 grey, 2 RGB, 3 palette, 4 grey +
    alpha, 6 RGBA) and interlace method (0 none, 1 Adam7)."""

    height: int
    width: int
    bit_depth: int
    colour_type: int
    interlace: int


def png_header(data: bytes) -> Optional[PngHeader]:
    """The IHDR of PNG bytes, or None when ``data`` does not start like a PNG (signature + IHDR)."""
    if len(data) < 29 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _compression, _filter, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return PngHeader(height, width, depth, colour, interlace)


def decode_grey8_png(data: bytes) -> Optional[np.ndarray]:
    """8-bit greyscale PNG bytes -> (H, W) uint8 (libspng); None for any other PNG, or for data that is
    not a PNG at all (the caller reads those with PIL, which also names what is wrong).

    Raises ``ValueError`` with libspng's reason when an 8-bit greyscale PNG is corrupt or truncated.
    """
    header = png_header(data)
    if header is None or header.colour_type != _GREYSCALE or header.bit_depth != 8:
        return None
    import pyspng

    try:
        mask = pyspng.load(data)
    except RuntimeError as err:  # pyspng reports every libspng error as a RuntimeError
        raise ValueError(str(err)) from None
    if mask.shape != (header.height, header.width) or mask.dtype != np.uint8:
        raise ValueError(f"decoded as {mask.shape} {mask.dtype}, expected ({header.height}, {header.width}) uint8")
    return mask
