"""Raw datasets -> Arrow IPC files with the official names, columns and row order (see DATA.md)."""

from mdpl.data.writers import food101, hatememes, mmimdb
from mdpl.data.writers.common import BadImageError, SplitReport, WriterSpec, convert

WRITERS: dict[str, WriterSpec] = {s.name: s for s in (mmimdb.SPEC, food101.SPEC, hatememes.SPEC)}

__all__ = ["WRITERS", "BadImageError", "SplitReport", "WriterSpec", "convert"]
