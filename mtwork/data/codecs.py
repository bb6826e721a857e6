"""JPEG decoding for the training loaders: libjpeg-turbo through simplejpeg, at full or reduced size.

Decoding is the largest single cost of a loader worker at the paper's input size (docs/benchmarks.md,
"Loader"). simplejpeg wraps libjpeg-turbo's TurboJPEG API and writes the pixels straight into a numpy
array, where PIL decodes into its own buffer and ``np.asarray`` copies it out again (``tobytes``). On a
1280x720 SynthDrive frame, one thread, 2026-12-06: 3.0 ms instead of PIL's 4.3 ms at full size, 2.5 ms
at half size. The pixels are PIL's: both run libjpeg-turbo's default (accurate integer) DCT and fancy
upsampling, and a test compares the two on generated files, full and reduced.

Chosen over torchvision.io.decode_jpeg (3.3 ms), whose image decoders torchvision 0.29 deprecates, and
which cannot decode at reduced size.
"""
from __future__ import annotations

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
