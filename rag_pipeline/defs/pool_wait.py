"""A step waiting for a pool slot sleeps between claims instead of spinning.

Dagster's in-process executor asks `InstanceConcurrencyContext.interval_to_next_pending_claim_check`
how long to sleep before re-trying a blocked claim, and that method returns
`min([0, *intervals])`: never more than 0, so a run whose step waits for a slot loops at full
CPU until the slot frees (upstream: dagster-io/dagster#20367, closed unmerged; still so in
1.13). Our vector-store step has one slot, so while one run writes, every other run in
progress spun on a core: profiled at 5,000 documents, the spinning took more CPU than all
our steps together, on a 2-core machine that left the writer a fraction of a core.

The patch is applied only where the method still has the defect (checked by calling it), so a
fixed Dagster keeps its own. How often a blocked claim is re-tried comes from the event log
storage (`defs/storage.py`).
"""

from __future__ import annotations

import time

from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

_upstream = InstanceConcurrencyContext.interval_to_next_pending_claim_check


def _interval_to_next_pending_claim_check(self: InstanceConcurrencyContext) -> float:
    if not self._pending_claims or not self._pending_timeouts:
        return 0.0
    return max(0.0, min(self._pending_timeouts.values()) - time.time())


def _spins(method) -> bool:  # noqa: ANN001
    """Whether `method` answers 0 for a claim that is not due for another minute."""
    probe = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    probe._pending_claims = {"step"}
    probe._pending_timeouts = {"step": time.time() + 60}
    return method(probe) <= 0


def install() -> bool:
    """Replace the method if it spins; True when the replacement is in place."""
    if InstanceConcurrencyContext.interval_to_next_pending_claim_check is _interval_to_next_pending_claim_check:
        return True
    if not _spins(_upstream):
        return False
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = _interval_to_next_pending_claim_check  # type: ignore[method-assign]
    return True
