"""The published numbers load as numbers (YAML 1.1 would leave 260.4e9 a string)."""

from star.paper import published


def _leaves(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from _leaves(value)
    else:
        yield node


def test_published_tables_hold_numbers():
    paper = published()
    for table in ("table1_accuracy_top1", "table2_efficiency", "table4_sparse_vs_full_accuracy",
                  "table5_sparse_vs_full_efficiency"):
        values = [v for row in paper[table]["rows"].values() for v in row]
        assert values and all(isinstance(v, float) for v in values), table
    breakdown = [v for v in _leaves(paper["table3_breakdown_top3"]) if not isinstance(v, str) or v[0].isdigit()]
    assert breakdown and all(isinstance(v, float) for v in breakdown)
    assert dict(paper["table3_breakdown_top3"]["st-gcn"]["macs"])["Conv2d"] == 260.4e9
