"""Python client for munet-server (grpcio + protobuf only)."""

from munet_client.client import MunetClient
from munet_client.errors import MunetError
from munet_client.exported import load_exported
from munet_client.images import ImageFolder
from munet_client.types import Label, Operation, PathComponent, Progress, SystemInfo, TaskInfo

__all__ = [
    "ImageFolder",
    "Label",
    "MunetClient",
    "MunetError",
    "Operation",
    "PathComponent",
    "Progress",
    "SystemInfo",
    "TaskInfo",
    "load_exported",
]
