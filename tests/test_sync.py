"""fedfish.sync.ChangeHistory against a naive oracle: the union of every change set since a version."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfish.sync import ChangeHistory

P = 12


@settings(max_examples=60, deadline=None)
@given(
    changes=st.lists(
        st.one_of(st.none(), st.lists(st.booleans(), min_size=P, max_size=P)), min_size=1, max_size=30
    ),
    data=st.data(),
)
def test_plan_is_the_union_of_changes_since_the_held_version(changes: list, data: st.DataObject) -> None:
    # Prepare
    history = ChangeHistory(P)
    sets: list[set[int] | None] = []
    for change in changes:
        bits = None if change is None else torch.tensor(change)
        history.record(bits)
        sets.append(None if change is None else {i for i, b in enumerate(change) if b})
    held = data.draw(st.integers(-2, len(changes) + 2))
    # Execute
    plan = ChangeHistory.from_state_dict(history.state_dict()).plan(held)
    # Assert: the oracle unions the change sets after `held` (None = everything)
    if held < 0 or held > len(changes):
        assert plan.kind == "full"
        return
    if held == len(changes):
        assert plan.kind == "current"
        return
    later = sets[held:]
    union = set(range(P)) if any(s is None for s in later) else set().union(*later)
    if union == set(range(P)):
        assert plan.kind == "full"
    else:
        assert plan.kind == "delta"
        assert set(torch.nonzero(plan.positions).flatten().tolist()) == union


def test_a_node_hundreds_of_versions_behind_needs_only_the_mask() -> None:
    # Prepare: one dense version, then 500 versions under the same fixed mask
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[::20] = True
    history = ChangeHistory(1000)
    history.record(None)
    for _ in range(500):
        history.record(mask)
    # Execute / Assert
    assert history.plan(1).kind == "delta" and torch.equal(history.plan(1).positions, mask)
    assert history.plan(0).kind == "full"
    assert history.plan(501).kind == "current"


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="num_params"):
        ChangeHistory(0)
    with pytest.raises(ValueError, match="bool vector of 3"):
        ChangeHistory(3).record(torch.ones(3))
