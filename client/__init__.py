"""Python client for munet-server (grpcio + protobuf only)."""

from client.client import MunetClient
from client.errors import MunetError
from client.images import ImageFolder
from client.types import Label, Operation, PathComponent, Progress, SystemInfo, TaskInfo

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
]
