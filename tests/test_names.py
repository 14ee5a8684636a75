"""star.names holds, without imports, names that other modules own: each must agree with its owner."""

from star import names, registry
from star.data.splits import BENCHMARKS


def test_the_light_model_list_is_exactly_the_registry():
    assert names.MODELS == tuple(registry.names())


def test_the_light_benchmark_table_is_the_splits_benchmarks():
    assert {name: (b.dataset, b.num_classes, b.criterion) for name, b in BENCHMARKS.items()} == names.BENCHMARKS
    assert set(names.NPZ_BENCHMARKS.values()) == set(BENCHMARKS)
    assert {f"{dataset}/{criterion}" for dataset, criteria in names.PYSKL_CRITERIA.items()
            for criterion in criteria} == set(BENCHMARKS)
    assert names.REPORT_TEMPLATE.is_file() and names.TABLE_TEMPLATE.is_file()
