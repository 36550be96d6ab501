"""The job state table (node.roles.jobless.states): every transition, and the refusals."""

from __future__ import annotations

import itertools

import pytest

from node.roles.jobless.states import (
    JOBSERVER_STATUS,
    TERMINAL,
    TRANSITIONS,
    Event,
    IllegalTransition,
    JobState,
    next_state,
)


def test_the_life_of_a_job():
    state = JobState.QUEUED
    state = next_state(state, Event.START)
    assert state is JobState.RUNNING
    assert next_state(state, Event.SUCCEED) is JobState.DONE
    assert next_state(state, Event.FAIL) is JobState.FAILED
    assert next_state(state, Event.CANCEL) is JobState.CANCELLED
    assert next_state(JobState.QUEUED, Event.SUCCEED) is JobState.DONE  # a known result


@pytest.mark.parametrize("state, event", list(itertools.product(JobState, Event)))
def test_terminal_states_never_change(state, event):
    if state in TERMINAL:
        with pytest.raises(IllegalTransition, match=f"a {state.value} job cannot {event.value}"):
            next_state(state, event)
    elif (state, event) not in TRANSITIONS:
        with pytest.raises(IllegalTransition):
            next_state(state, event)
    else:
        assert next_state(state, event) in JobState


def test_every_state_has_a_jobserver_status():
    assert set(JOBSERVER_STATUS) == set(JobState)
    assert JOBSERVER_STATUS[JobState.CANCELLED] == "canceled"  # upstream's spelling
    assert {s.terminal for s in JobState} == {True, False}
