"""Which site this ClientApp serves: settings from the node config, never from the server.

Resolution order:

1. **Deployment**: the SuperNode was started with ``--node-config 'data-path=... ledger-path=...'``.
2. **fedtune simulate**: Flower's simulated SuperNodes only carry ``partition-id``; ``fedtune simulate`` writes a
   site table (JSON: partition id -> node config) and points ``FEDTUNE_SIMULATION_SITES`` at it.
3. **flwr run . local** (demo): with neither, partition ``p`` of ``n`` gets an IID share of the built-in sample
   data (a generate run: of the built-in synthetic instructions), written with its ledger under
   ``<out-dir>/sites/site-p/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.data.instructions import instruction_dataset
from common.data.pair_split import partition_pairs
from common.data.partition import PartitionSpec, partition_dataset
from common.data.sample import SAMPLE_LABELS, sample_dataset
from common.errors import ConfigError
from common.federation.config import FederationConfig
from common.federation.site import EVALUATE_ALL, SiteSettings, parse_site_settings
from common.fileio import atomic_write_bytes

SIMULATION_SITES_ENV = "FEDTUNE_SIMULATION_SITES"


def resolve_site(node_config: Mapping[str, Any], config: FederationConfig) -> SiteSettings:
    """The settings of the site this process serves."""
    if "data-path" in node_config:
        return parse_site_settings(node_config)
    if "partition-id" not in node_config:
        raise ConfigError(
            'this SuperNode has no site settings: start it with --node-config \'data-path="..." '
            'ledger-path="..."\' (fedtune client start does this)'
        )
    partition = int(node_config["partition-id"])
    table = os.environ.get(SIMULATION_SITES_ENV)
    if table:
        return _from_table(Path(table), partition)
    return _demo_site(partition, int(node_config.get("num-partitions", 1)), config)


def _from_table(path: Path, partition: int) -> SiteSettings:
    try:
        sites = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the simulation site table ({exc})") from None
    entry = sites.get(str(partition)) if isinstance(sites, dict) else None
    if entry is None:
        raise ConfigError(f"{path}: no site for partition {partition}")
    return parse_site_settings(entry, source=f"{path} site {partition}")


def _demo_site(partition: int, partitions: int, config: FederationConfig) -> SiteSettings:
    directory = Path(config.out_dir) / "sites" / f"site-{partition}"
    data_path = directory / "train.jsonl"
    generate = config.model_task() == "generate"
    if not data_path.exists():
        rows: list[dict[str, str]]
        if generate:  # the built-in synthetic instructions
            pairs = partition_pairs(instruction_dataset(), sites=partitions, spec=PartitionSpec(kind="iid"), seed=0)
            share = pairs[partition]
            rows = [{"prompt": p, "response": r} for p, r in zip(share.prompts, share.responses, strict=True)]
        else:
            texts = partition_dataset(sample_dataset(), sites=partitions, spec=PartitionSpec(kind="iid"), seed=0)
            labelled = texts[partition]
            rows = [
                {"text": text, "label": labelled.label_names[label]}
                for text, label in zip(labelled.texts, labelled.labels, strict=True)
            ]
        atomic_write_bytes(data_path, ("\n".join(json.dumps(row) for row in rows) + "\n").encode())
    return SiteSettings(
        site_name=f"demo-site-{partition}",
        task="generate" if generate else "classify",
        data_path=data_path,
        ledger_path=directory / "ledger.jsonl",
        labels=None if generate else SAMPLE_LABELS,  # the built-in sample data's label set
        release_metrics=EVALUATE_ALL,  # a demo shows its progress; its data is public sample text
    )
