"""Image bytes <-> uint8 tensors: decode uploads safely, bring them to the stored square size.

Every image is decoded with Pillow (JPEG, PNG, WebP, BMP, GIF first frame, ...) the way the ecosystem
does (torchvision/timm loaders, browsers): EXIF orientation applied, 16-bit channels scaled (not
clipped) to 8 bits, transparency composited onto white. Then it is resized so its shorter side is
the storage size and centre-cropped to a square. Upload and Predict decode with these same functions.
Decompression bombs are refused before the pixels are decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from munet_server.errors import InvalidImage

MAX_PIXELS = 64_000_000  # ~8000 x 8000: larger images are refused, not decoded


def decode_image(data: bytes) -> Image.Image:
    """Encoded bytes -> RGB PIL image; `InvalidImage` with a reason for anything else."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w < 1 or h < 1 or w * h > MAX_PIXELS:
                raise InvalidImage(f"the image is {w}x{h} pixels; the limit is {MAX_PIXELS:,} pixels")
            img.load()
            img = ImageOps.exif_transpose(img)  # phone photos: stored sideways, tagged upright
    except InvalidImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidImage(
            f"the bytes are not a decodable image ({type(e).__name__}); send JPEG or PNG"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InvalidImage(f"the image is truncated or corrupt: {e}") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB without surprises: high bit depths scaled, alpha on white."""
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


def to_storage(img: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> (3, size, size) uint8: the centred square, resized to `size`.

    Cropping first bounds the cost by the square, not the image: a 50000x1 PNG of 225 bytes once took
    18 s and 2.5 GB here, because its short side was scaled up before the crop."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def decode_to_storage(data: bytes, size: int) -> torch.Tensor:
    return to_storage(decode_image(data), size)


def encode_png(image: np.ndarray | torch.Tensor) -> bytes:
    """(H, W) grey, (H, W, 3) or (3, H, W) uint8 -> PNG bytes (lossless, so round trips are exact)."""
    arr = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_png wants uint8 pixels, got {arr.dtype}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()
