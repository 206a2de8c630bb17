from __future__ import annotations

from collections import Counter

import pytest

from common.data.partition import PartitionSpec, partition_dataset, partition_indices
from common.data.sample import sample_dataset
from common.errors import ConfigError


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "size:2"])
def test_partitions_are_disjoint_covers_and_seeded(spec):
    labels = sample_dataset(600).labels
    parts = partition_indices(labels, sites=4, spec=PartitionSpec.parse(spec), seed=1, min_size=20)
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(600))
    assert min(len(p) for p in parts) >= 20
    assert parts == partition_indices(labels, sites=4, spec=PartitionSpec.parse(spec), seed=1, min_size=20)


def test_size_skew_and_label_skew():
    labels = sample_dataset(1200).labels
    sizes = [len(p) for p in partition_indices(labels, sites=4, spec=PartitionSpec.parse("size:2"), seed=0)]
    assert sizes == sorted(sizes) and sizes[-1] > 4 * sizes[0]
    skewed = partition_indices(labels, sites=4, spec=PartitionSpec.parse("dirichlet:0.1"), seed=0, min_size=10)
    shares = [Counter(labels[i] for i in part)[1] / len(part) for part in skewed]
    assert max(shares) - min(shares) > 0.5  # some sites are mostly one class
    iid = partition_indices(labels, sites=4, spec=PartitionSpec.parse("iid"), seed=0)
    assert max(len(p) for p in iid) - min(len(p) for p in iid) <= 1


def test_partition_dataset_keeps_labels():
    data = sample_dataset(100)
    parts = partition_dataset(data, sites=3, spec=PartitionSpec.parse("iid"), seed=0)
    assert sum(len(p) for p in parts) == 100 and all(p.label_names == data.label_names for p in parts)


@pytest.mark.parametrize("text", ["random", "dirichlet:-1", "size:0", "dirichlet:x"])
def test_bad_specs(text):
    with pytest.raises(ConfigError):
        PartitionSpec.parse(text)


def test_too_few_examples():
    with pytest.raises(ConfigError, match="cannot give 5 sites"):
        partition_indices([0, 1] * 4, sites=5, spec=PartitionSpec.parse("iid"), seed=0, min_size=2)
