"""An image as the server prepares it for Predict, in one place: the server decodes with these
functions, and a user of an exported task calls `prepare` to get Predict's answers without the server.

    bytes -> decoded (EXIF orientation applied, 16-bit channels scaled, transparency on white)
          -> the centred square, resized bilinearly to the storage size (Pillow)
          -> [0, 1] floats resized to the task's size (antialiased bilinear, as torch's interpolate)

Needs Pillow and numpy (the server's install has them; `pip install pillow numpy` otherwise), imported
when first called so that the CLI does not need them."""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

MAX_PIXELS = 64_000_000  # ~8000 x 8000: larger images are refused, not decoded


class UndecodableImage(ValueError):
    """The bytes are not an image this module can decode, with the reason in its message."""


def decode(data: bytes) -> Image.Image:
    """Encoded bytes -> 8-bit RGB PIL image. Decompression bombs are refused before pixels are decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise UndecodableImage("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w < 1 or h < 1 or w * h > MAX_PIXELS:
                raise UndecodableImage(f"the image is {w}x{h} pixels; the limit is {MAX_PIXELS:,} pixels")
            img.load()
            img = ImageOps.exif_transpose(img)  # phone photos: stored sideways, tagged upright
    except UndecodableImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UndecodableImage(f"the bytes are not a decodable image ({type(e).__name__}); send JPEG or PNG") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise UndecodableImage(f"the image is truncated or corrupt: {e}") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB without surprises: high bit depths scaled, alpha on white."""
    import numpy as np
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        wide = img.mode.startswith("I;16") or (img.mode == "I" and arr.max() > 255)
        top = 65535.0 if wide else 255.0
        img = Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    transparent = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if transparent:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return img.convert("RGB")


def square(img: Image.Image, size: int) -> np.ndarray:
    """RGB PIL image -> (size, size, 3) uint8: the centred square, resized bilinearly to `size`.
    Cropping first bounds the cost by the square, not the image (a 50000x1 image stays cheap)."""
    import numpy as np
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(img, dtype=np.uint8).copy()


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """(3, H, W) float32 in [0, 1] -> (3, size, size): antialiased bilinear, the filter of torch's
    `interpolate(mode="bilinear", antialias=True, align_corners=False)` (and Pillow's)."""
    import numpy as np

    rows, cols = _filter(x.shape[1], size), _filter(x.shape[2], size)
    out = np.einsum("oh,chw,pw->cop", rows, x.astype(np.float64), cols)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _filter(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a triangle filter one input pixel wide, widened by the scale when shrinking."""
    import numpy as np

    scale = n_in / n_out
    support = max(scale, 1.0)
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - center + 0.5) / support))
        w[i, lo:hi] = taps / taps.sum()
    return w


def prepare(data: bytes, metadata: dict[str, Any]) -> np.ndarray:
    """Encoded image -> the exported model's input (3, S, S) float32, from its metadata (model.json,
    or the ONNX model's metadata_props): stack several with numpy for a batch."""
    import numpy as np

    storage, size = int(metadata["storage_size"]), int(metadata["image_size"])
    x = square(decode(data), storage).transpose(2, 0, 1).astype(np.float32) / 255.0
    return x if size == storage else resize(x, size)
