"""Image bytes <-> uint8 tensors: decode uploads safely, bring them to the stored square size.

Every image is decoded by `munet_client.preprocess`, the code a user of an exported task runs too:
Pillow (JPEG, PNG, WebP, BMP, GIF first frame, ...) the way the ecosystem does (torchvision/timm
loaders, browsers): EXIF orientation applied, 16-bit channels scaled (not clipped) to 8 bits,
transparency composited onto white; then the centred square, resized to the storage size. Upload
and Predict decode with these same functions. Decompression bombs are refused before decoding.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from munet_client import preprocess
from munet_server.errors import InvalidImage


def decode_image(data: bytes) -> Image.Image:
    """Encoded bytes -> RGB PIL image; `InvalidImage` with a reason for anything else."""
    try:
        return preprocess.decode(data)
    except preprocess.UndecodableImage as e:
        raise InvalidImage(str(e)) from None


def to_storage(img: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> (3, size, size) uint8: the centred square, resized to `size`."""
    return torch.from_numpy(preprocess.square(img, size)).permute(2, 0, 1).contiguous()


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
