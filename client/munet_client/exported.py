"""Load a task exported with `munet export` into PyTorch, without a server.

The bundle (model.safetensors + model.json) names a timm root and the task's components; rebuilding
them needs torch and timm, which the server's install brings (`pip install 'munet-server[server]'`),
so this module imports them only when called. For no PyTorch at all, run model.onnx with onnxruntime.
"""

from __future__ import annotations

import os
from typing import Any


def load_exported(directory: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """(module, metadata): an eval-mode torch.nn.Module mapping float32 (N, 3, S, S) RGB in [0, 1]
    at metadata["image_size"] to logits over metadata["labels"]."""
    try:
        from munet_server.serve.export import load_module
    except ImportError as e:
        raise ImportError(
            "loading an exported task into PyTorch needs torch and timm: pip install 'munet-server[server]' "
            "(or run model.onnx with onnxruntime)"
        ) from e
    return load_module(directory)
