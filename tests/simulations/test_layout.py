"""Laying out a simulation: what the operator is told before anything trains."""

from __future__ import annotations

import json

from common.federation.config import parse_run_config
from simulations.layout import SimulationRequest, prepare, read_sources, weight_lines


def test_a_site_above_the_weight_cap_is_announced_before_training():
    config = parse_run_config({"max-site-weight": 0.5, "min-sites": 2})
    (line,) = weight_lines({0: 64, 1: 63}, config)
    assert line.startswith("warning: site-0 holds 50.4%") and "--weighting uniform" in line
    assert weight_lines({0: 64, 1: 64}, config) == []
    assert weight_lines({0: 64, 1: 63}, parse_run_config({"weighting": "uniform"})) == []


def test_a_generate_layout_writes_pair_sites_and_the_servers_held_out_pairs(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"the w{i}", "response": f"w{i}"} for i in range(40)]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    request = SimulationRequest(data=pairs, sites=2, task="generate")
    out = tmp_path / "run"
    sources = read_sources(request, out)
    values = {**sources.run_config_values(out), "out-dir": str(out), "model": str(tiny_model_dir)}
    values.update({"batch-size": 8, "min-sites": 2})
    prepared = prepare(request, parse_run_config(values), sources)

    assert prepared.config.task == "generate" and prepared.config.training.max_length == 256
    assert all(site.task == "generate" and site.labels is None for site in prepared.sites.values())
    written = [json.loads(line) for line in prepared.sites[0].data_path.read_text().splitlines()]
    assert written and set(written[0]) == {"prompt", "response"}
    server = [json.loads(line) for line in (out / "server" / "eval.jsonl").read_text().splitlines()]
    assert len(server) == round(40 * 0.2) and set(server[0]) == {"prompt", "response"}
    # The preview counts what each site trains on: 32 pairs split in two, each holding 20% out for its metrics.
    assert [line.split("(N=")[1].split(",")[0] for line in prepared.recipe_lines[:2]] == ["13", "13"]
