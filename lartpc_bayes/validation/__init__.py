"""Validation: campaigns (SBC and closure, resumable, one JSON per replica: campaign, records), the
talk-000 / robustness / Hessian checks (checks), the report of docs/validation.md (report) and
the validate command (cli).
"""

from __future__ import annotations

from .campaign import (
    DEFAULT_ROOT,
    PRESETS,
    CampaignConfig,
    CampaignContext,
    campaign_dir,
    campaign_segments,
    context,
    fixed_values,
    replica_key,
    replica_path,
    run_campaign,
    run_replica,
    with_replicas,
)
from .records import (
    collect,
    load_records,
    tidy_table,
    to_dataset,
    versions,
)

__all__ = [
    "DEFAULT_ROOT",
    "PRESETS",
    "CampaignConfig",
    "CampaignContext",
    "campaign_dir",
    "campaign_segments",
    "collect",
    "context",
    "fixed_values",
    "load_records",
    "replica_key",
    "replica_path",
    "run_campaign",
    "run_replica",
    "tidy_table",
    "to_dataset",
    "versions",
    "with_replicas",
]
