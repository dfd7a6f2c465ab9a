"""HDF5 formats: larnd-sim segments, the package's hit files, LArPix packets, ndlar_flow hits."""

from __future__ import annotations

from .core import (
    CONFIG_DTYPE,
    DEFAULT_EVENT_SPACING_US,
    HITS_FORMAT_VERSION,
    MC_ASSN_DTYPE,
    MESSAGE_DTYPE,
    PACKET_DTYPE,
    PPS_PERIOD_US,
    SEGMENTS_DTYPE,
    HitFile,
    IOFormatError,
    packets_to_hits,
    read_flow_hits,
    read_hits,
    read_segments,
    write_hits,
    write_packets,
    write_segments,
)

__all__ = [
    "CONFIG_DTYPE",
    "DEFAULT_EVENT_SPACING_US",
    "HITS_FORMAT_VERSION",
    "MC_ASSN_DTYPE",
    "MESSAGE_DTYPE",
    "PACKET_DTYPE",
    "PPS_PERIOD_US",
    "SEGMENTS_DTYPE",
    "HitFile",
    "IOFormatError",
    "packets_to_hits",
    "read_flow_hits",
    "read_hits",
    "read_segments",
    "write_hits",
    "write_packets",
    "write_segments",
]
