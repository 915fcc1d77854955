"""Images decode the way the ecosystem decodes them, the same for upload and Predict: EXIF orientation
applied, 16-bit channels scaled (not clipped), transparency composited onto white.

Each case sends, over the real server, an image and its plain 8-bit RGB equivalent: the answers must
be identical."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from munet_client import MunetClient
from munet_server.data.images import decode_image
from tests.helpers import image_folder, make_app


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((40, 60, 3), np.uint8)
    x[5:30, 10:25] = rng.integers(0, 255, 3)
    x[20:35, 30:55] = rng.integers(0, 255, 3)
    return x


def test_decoding_rules():
    # 16-bit greyscale: the full range maps onto 0..255 (Pillow's convert("RGB") clips it to black/white).
    wide = (np.linspace(0, 65535, 256).reshape(1, 256).repeat(4, 0)).astype(np.uint16)
    grey = np.asarray(decode_image(_png(Image.fromarray(wide))))[..., 0]
    assert grey[0, 0] == 0 and grey[0, -1] == 255 and 120 <= grey[0, 128] <= 135
    assert len(np.unique(grey)) > 200
    # Transparent pixels become white, not whatever colour they hide.
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = [200, 30, 30, 255]
    out = np.asarray(decode_image(_png(Image.fromarray(rgba))))
    assert (out[0, 0] == 255).all() and tuple(out[3, 3]) == (200, 30, 30)
    # A half-transparent pixel is blended with white.
    rgba[0, 0] = [0, 0, 0, 128]
    assert 120 <= np.asarray(decode_image(_png(Image.fromarray(rgba))))[0, 0, 0] <= 130
    # EXIF orientation 6 (rotate 90° clockwise to view): a 60x40 stored image is shown as 40x60.
    img = Image.fromarray(_scene())
    exif = img.getexif()
    exif[0x0112] = 6
    shown = decode_image(_png(img, exif=exif.tobytes()))
    assert shown.size == (40, 60)
    assert np.array_equal(np.asarray(shown), np.asarray(img.transpose(Image.Transpose.ROTATE_270)))


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("decode")
    app = make_app(tmp / "store", tiny_vit)
    client = MunetClient(f"127.0.0.1:{app.port}", timeout=120)
    folder, _ = image_folder(tmp, classes=3, per_class=12)
    assert client.wait(client.add_task_from_folder("t", folder).name, timeout=300).state == "SUCCEEDED"
    yield client
    client.close()
    app.stop(0)


def test_predict_sees_what_a_viewer_shows(served):
    client = served
    scene = _scene(1)
    plain = _png(Image.fromarray(scene))
    # RGBA: the scene's black background made transparent must read as white, exactly.
    on_white = scene.copy()
    background = (scene == 0).all(-1)
    on_white[background] = 255
    rgba = np.dstack([scene, np.where(background, 0, 255).astype(np.uint8)])
    # EXIF: the scene stored rotated, tagged to be shown upright.
    stored = Image.fromarray(scene).transpose(Image.Transpose.ROTATE_90)
    exif = stored.getexif()
    exif[0x0112] = 6
    # 16-bit: the scene at 16 bits per channel of grey, and its 8-bit equivalent.
    grey8 = scene.mean(-1).astype(np.uint8)
    grey16 = grey8.astype(np.uint16) * 257
    pairs = [
        (_png(Image.fromarray(rgba)), _png(Image.fromarray(on_white))),
        (_png(stored, exif=exif.tobytes()), plain),
        (_png(Image.fromarray(grey16)), _png(Image.fromarray(grey8))),
    ]
    for sent, expected in pairs:
        a, b = client.predict("t", [sent, expected], top_k=3)
        assert a == b


def test_a_tiny_file_of_extreme_shape_is_cheap(served):
    """A 50000x1 PNG is ~130 bytes; it once cost 18 s and 2.5 GB per Predict (scaled up, then cropped)."""
    import time

    data = _png(Image.fromarray(np.zeros((1, 50000), np.uint8)))
    assert len(data) < 1000
    t0 = time.perf_counter()
    (labels,) = served.predict("t", [data], top_k=1)
    assert time.perf_counter() - t0 < 5.0 and len(labels) == 1
