"""A job's life, as a table.

Theory of operation
-------------------

A job is one transformation (its checksum is the job id) being computed. It is created
QUEUED when a first client asks for a transformation whose result is not known. While
QUEUED its input buffers are gathered and it waits for a free slot of the backend; it
becomes RUNNING when the backend reports its process started. It ends in exactly one of
three terminal states:

* DONE: the result buffer is stored (and recorded in the database, when the node has
  one); every waiting client gets the result checksum. A transformation whose result
  was already known is DONE at once (``cached``), without running;
* FAILED: the code failed, a limit was exceeded, or an input was missing; the error
  text is kept and no result is recorded;
* CANCELLED: every client that waited detached (soft cancels), or one hard cancel came;
  the job's processes are killed, and a result that arrives late is thrown away.

A terminal job stays listed (``GET /api/v1/jobs``) but is never revived: asking again
for a FAILED or CANCELLED transformation creates a new job, and asking for a DONE one
answers from the result.

Transitions not in the table are refused (``IllegalTransition``): e.g. a cancel that
races with success finds the job DONE and changes nothing.
"""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


class Event(str, enum.Enum):
    START = "start"  # the backend started the job's process
    SUCCEED = "succeed"  # result stored
    FAIL = "fail"
    CANCEL = "cancel"


TERMINAL = frozenset((JobState.DONE, JobState.FAILED, JobState.CANCELLED))

#: (state, event) -> next state
TRANSITIONS: dict[tuple[JobState, Event], JobState] = {
    (JobState.QUEUED, Event.START): JobState.RUNNING,
    (JobState.QUEUED, Event.SUCCEED): JobState.DONE,  # cached, or a backend without a start signal
    (JobState.QUEUED, Event.FAIL): JobState.FAILED,
    (JobState.QUEUED, Event.CANCEL): JobState.CANCELLED,
    (JobState.RUNNING, Event.SUCCEED): JobState.DONE,
    (JobState.RUNNING, Event.FAIL): JobState.FAILED,
    (JobState.RUNNING, Event.CANCEL): JobState.CANCELLED,
}


class IllegalTransition(Exception):
    pass


def next_state(state: JobState, event: Event) -> JobState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"a {state.value} job cannot {event.value}") from None


#: what the seamless-jobserver protocol calls each state (a job whose result is stored
#: but not yet recorded is "done" already: see service.Job.result_ready)
JOBSERVER_STATUS = {
    JobState.QUEUED: "running",
    JobState.RUNNING: "running",
    JobState.DONE: "done",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "canceled",
}
