"""A step waiting for a pool slot sleeps between claims instead of spinning.

Dagster's in-process executor asks `InstanceConcurrencyContext.interval_to_next_pending_claim_check`
how long to sleep before re-trying a blocked claim, and that method returns
`min([0, *intervals])`: never more than 0, so a run whose step waits for a slot loops at full
CPU until the slot frees (upstream: dagster-io/dagster#20367, closed unmerged; still so in
1.13). Profiled at 5,000 documents, when the vector-store step still had a one-slot pool:
while one run wrote, every other run in progress spun on a core, more CPU than all our steps
together. The embedding step's pool (`rag_embedding_endpoint`) still has runs waiting.

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
    """Whether `method` answers 0 for a claim that is not due for another minute. A Dagster
    whose class no longer looks like this is left alone (imports must not fail over it)."""
    probe = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    probe._pending_claims = {"step"}
    probe._pending_timeouts = {"step": time.time() + 60}
    try:
        return method(probe) <= 0
    except Exception:
        return False


def install() -> bool:
    """Replace the method if it spins; True when the replacement is in place."""
    if InstanceConcurrencyContext.interval_to_next_pending_claim_check is _interval_to_next_pending_claim_check:
        return True
    if not _spins(_upstream):
        return False
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = _interval_to_next_pending_claim_check  # type: ignore[method-assign]
    return True
