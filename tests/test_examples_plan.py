"""Every example plans, applies to the fake kernel, and then plans empty."""

import glob
import os

import pytest

from pask_ipvs.backend.fake import fake_backends
from pask_ipvs.desired import expand
from pask_ipvs.fwmarks import fwmarks_for
from pask_ipvs.load import load_config
from pask_ipvs.observe import observe
from pask_ipvs.pipeline import reconcile
from pask_ipvs.state import PaskState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(p for p in glob.glob(os.path.join(ROOT, "examples", "*.yaml"))
                  if not p.endswith(("bad.yaml", "scale-1024.yaml")))


def converge(config, b, state):
    marks = fwmarks_for(config, state.fwmarks)
    desired = expand(config, marks)
    return reconcile(desired, observe(desired, b), state, marks, b)


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_plans_applies_and_converges(path):
    config = load_config(path)
    b = fake_backends()
    first = converge(config, b, PaskState())
    assert first.plan.changed and first.result.ok and not first.remaining.changed
    services = {op.service for op in first.plan.ops if op.kind == "service"}
    assert services == {s.name for s in config.services}
    second = converge(config, b, first.state)
    assert second.plan.ops == ()


def test_examples_are_there():
    names = {os.path.basename(p) for p in EXAMPLES}
    for mode in ("dest-nat", "both-nat", "l2-dsr", "l3-dsr", "lan-to-lan", "filters", "demo"):
        assert f"{mode}.yaml" in names
