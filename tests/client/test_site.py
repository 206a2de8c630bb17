"""Which site a ClientApp serves: the ``flwr run . local`` demo sites, for both tasks."""

from __future__ import annotations

from client.site import resolve_site
from common.data.pairs import read_pairs_file
from common.data.readers import read_labeled_file
from common.federation.config import parse_run_config
from tests.causal_helpers import build_tiny_llama


def test_a_demo_site_gets_an_iid_share_of_the_built_in_data_for_its_task(tiny_model_dir, tmp_path):
    classify = parse_run_config({"model": str(tiny_model_dir), "out-dir": str(tmp_path / "c")})
    sites = [resolve_site({"partition-id": k, "num-partitions": 2}, classify) for k in range(2)]
    assert [s.task for s in sites] == ["classify", "classify"]
    shares = [read_labeled_file(s.data_path, s.data_spec()) for s in sites]
    assert not set(shares[0].texts) & set(shares[1].texts) and all(len(share) > 50 for share in shares)

    llama = build_tiny_llama(tmp_path / "llama")
    generate = parse_run_config({"model": str(llama), "out-dir": str(tmp_path / "g")})  # task auto: a causal LM
    site = resolve_site({"partition-id": 1, "num-partitions": 2}, generate)
    assert site.task == "generate" and site.labels is None
    pairs = read_pairs_file(site.data_path, site.pair_spec())
    assert len(pairs) > 50
