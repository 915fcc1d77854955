"""muNet server: one growing multitask vision system, served over gRPC, that never forgets."""

__version__ = "0.3.0"
