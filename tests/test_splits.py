import itertools

import numpy as np
import pytest

from star.data.splits import BENCHMARKS, class_names, get_benchmark, missing_samples
from star.data.store import CLIP_DTYPE

# The split rules, restated from the NTU RGB+D papers (Shahroudy et al. 2016, Liu et al. 2019).
XSUB60 = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}
XSUB120 = XSUB60 | {45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
                    89, 91, 92, 93, 94, 95, 97, 98, 100, 103}


@pytest.fixture(scope="module")
def grid():
    """A clip table with every setup, camera and subject, plus two officially missing samples."""
    rows = [(f"S{s:03d}C{c:03d}P{p:03d}R002A{1 + (3 * s + p) % 120:03d}", (3 * s + p) % 120, s, c, p, 2, 50, 1, 1)
            for s, c, p in itertools.product(range(1, 33), range(1, 4), range(1, 107))]
    assert not {row[0] for row in rows} & missing_samples("ntu120")
    rows += [("S001C002P005R002A008", 7, 1, 2, 5, 2, 50, 1, 1), ("S019C001P046R001A075", 74, 19, 1, 46, 1, 50, 1, 1)]
    return np.array(rows, dtype=CLIP_DTYPE)


def _expected(row, benchmark):
    name, _, setup, camera, subject = row[0], row[1], row[2], row[3], row[4]
    dataset, criterion = benchmark.split("/")
    if dataset == "ntu60" and setup > 17 or name in missing_samples(dataset):
        return None
    if criterion == "xsub":
        return "train" if subject in (XSUB60 if dataset == "ntu60" else XSUB120) else "test"
    if criterion == "xview":
        return "train" if camera in (2, 3) else "test"
    return "train" if setup % 2 == 0 else "test"


@pytest.mark.parametrize("benchmark_name", sorted(BENCHMARKS))
def test_split_membership_follows_the_id_rules(grid, benchmark_name):
    expected = [_expected(row, benchmark_name) for row in grid]
    for side in ("train", "test"):
        got = BENCHMARKS[benchmark_name].indices(grid, side)
        np.testing.assert_array_equal(got, [i for i, e in enumerate(expected) if e == side])


def test_split_sizes_on_the_full_grid(grid):
    sizes = {b: (len(BENCHMARKS[b].indices(grid, "train")), len(BENCHMARKS[b].indices(grid, "test")))
             for b in BENCHMARKS}
    # The grid: 32 setups x 3 cameras x 106 subjects; the two extra rows are officially missing, so they never count.
    assert sizes["ntu60/xsub"] == (17 * 3 * 20, 17 * 3 * 86)
    assert sizes["ntu60/xview"] == (17 * 2 * 106, 17 * 106)
    assert sizes["ntu120/xsub"] == (32 * 3 * 53, 32 * 3 * 53)
    assert sizes["ntu120/xset"] == (16 * 3 * 106, 16 * 3 * 106)


def test_official_lists_and_class_names():
    assert len(missing_samples("ntu60")) == 302
    assert len(missing_samples("ntu120")) == 535
    assert missing_samples("ntu60") < missing_samples("ntu120")
    names = class_names()
    assert len(names) == 120 and names[0] == "drink water"


def test_unknown_benchmark_and_side():
    with pytest.raises(ValueError, match="unknown benchmark 'ntu60/xset'; choose one of"):
        get_benchmark("ntu60/xset")
    with pytest.raises(ValueError, match="unknown split side 'val'"):
        BENCHMARKS["ntu60/xsub"].indices(np.zeros(0, CLIP_DTYPE), "val")
