"""``--dist loadgroup`` really groups: a test marked ``xdist_group`` carries its group.

pytest-xdist sends the tests of one group to one worker by appending ``@group`` to their node
ids; when that is lost (pytest 9.2 with pytest-xdist 3.8.0 drops it silently), every grouped
module is spread over the workers and its module-scoped harness is built on each of them
(test_parallel_ops.py and test_parallel_runner.py: ~3 minutes more in CI) with no other sign.
"""

import pytest

pytestmark = pytest.mark.xdist_group("xdist_group_check")


def test_a_grouped_test_carries_its_group_under_loadgroup(request, pytestconfig):
    # on a worker xdist sets "dist" to "no" and keeps "loadgroup", the flag its group hook reads
    if not hasattr(pytestconfig, "workerinput") or not pytestconfig.getoption("loadgroup", False):
        pytest.skip("checks the grouping of an xdist --dist loadgroup run (CI's)")
    assert request.node.nodeid.endswith("@xdist_group_check"), (
        f"{request.node.nodeid}: the xdist_group was dropped, so loadgroup spreads every grouped"
        " module over the workers (pytest/pytest-xdist mismatch: see the pytest pin in"
        " pyproject.toml)"
    )
