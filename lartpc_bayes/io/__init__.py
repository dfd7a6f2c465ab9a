"""HDF5 formats, one module per format: larnd-sim segments (segments), the package's hit files
(hits), LArPix packets (packets, with the chip/channel mapping in layout), ndlar_flow hits
(flow); shared plumbing in common.
"""

from __future__ import annotations

from .common import (
    IOFormatError,
)
from .flow import (
    read_flow_hits,
)
from .hits import (
    HITS_FORMAT_VERSION,
    HitFile,
    merge_hit_files,
    read_hits,
    renumber_events,
    require_one_card,
    write_hits,
)
from .packets import (
    CONFIG_DTYPE,
    DEFAULT_EVENT_SPACING_US,
    MC_ASSN_DTYPE,
    MESSAGE_DTYPE,
    PACKET_DTYPE,
    PPS_PERIOD_US,
    packets_to_hits,
    write_packets,
)
from .segments import (
    SEGMENTS_DTYPE,
    read_segments,
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
    "merge_hit_files",
    "packets_to_hits",
    "read_flow_hits",
    "read_hits",
    "read_segments",
    "renumber_events",
    "require_one_card",
    "write_hits",
    "write_packets",
    "write_segments",
]
