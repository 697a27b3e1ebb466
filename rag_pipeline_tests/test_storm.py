"""A randomized storm: uploads, modifications, renames and deletions interleaved with runs that
are part-way through their steps. The invariants hold after every step, and once everything
settles the index is exactly the landing directory, with each distinct text embedded once."""

from __future__ import annotations

import shutil
from collections import Counter

import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from rag_pipeline.core import detection
pytestmark = __import__("pytest").mark.slow  # the slow tier: a long randomized storm

# Few paths, so changes keep landing on documents whose runs are in flight.
PATHS = [("kb1", "a.txt"), ("kb1", "sub/b.md"), ("kb2", "a.txt"), ("kb2", "d.txt")]
PARAGRAPHS = [
    "Otters hold hands while they sleep so they do not drift apart on the tide.",
    "Sourdough needs a lively starter, patience and a very hot oven.",
    "The Voyager probes carry golden records of sounds from Earth.",
    "Moss grows on every side of a tree, whatever the folk wisdom says.",
    "Tidal locking keeps the same face of the Moon turned towards us.",
    "Honeybees dance to tell their sisters where the flowers are.",
]
contents = st.lists(st.sampled_from(PARAGRAPHS), min_size=1, max_size=4).map("\n\n".join)


def test_storm_of_changes_keeps_the_index_consistent(rig):
    class Storm(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            _reset(rig)
            self.runs: list[tuple[str, list[str]]] = []  # (next step, documents) of runs in flight

        def _present(self) -> list[tuple[str, str]]:
            return [(kb, p) for kb, p in PATHS if (rig.inbox / kb / p).exists()]

        @rule(where=st.sampled_from(PATHS), text=contents, detect=st.booleans())
        def write(self, where: tuple[str, str], text: str, detect: bool) -> None:
            rig.write(*where, text)
            self._maybe_detect(detect)

        def _maybe_detect(self, detect: bool) -> None:
            # Often the change is registered at once (a tick right after it), so it lands
            # between a run's steps rather than only before the next run.
            if detect:
                rig.detect()

        @precondition(lambda self: self._present())
        @rule(data=st.data(), detect=st.booleans())
        def delete(self, data: st.DataObject, detect: bool) -> None:
            rig.remove(*data.draw(st.sampled_from(self._present())))
            self._maybe_detect(detect)

        @precondition(lambda self: self._present())
        @rule(data=st.data(), detect=st.booleans())
        def rename(self, data: st.DataObject, detect: bool) -> None:
            source = data.draw(st.sampled_from(self._present()))
            target = data.draw(st.sampled_from(PATHS))
            (rig.inbox / target[0] / target[1]).parent.mkdir(parents=True, exist_ok=True)
            (rig.inbox / source[0] / source[1]).rename(rig.inbox / target[0] / target[1])
            self._maybe_detect(detect)

        @rule()
        def tick(self) -> None:
            rig.detect()
            pending = detection.pending_documents(rig.engine, None)
            if pending:
                self.runs.append(("extract", pending))

        @rule()
        def purge(self) -> None:
            rig.purge()

        @precondition(lambda self: self.runs)
        @rule(data=st.data())
        def advance_a_run(self, data: st.DataObject) -> None:
            # The embed step in two halves (vectors, then the locked write), so other rules can
            # land between reading a document and writing its points.
            step, work = self.runs.pop(data.draw(st.integers(0, len(self.runs) - 1)))
            result = getattr(rig, step)(work)
            following = {"extract": "chunk", "chunk": "compute", "compute": "write_points"}.get(step)
            if following:
                self.runs.append((following, result if step == "compute" else work))

        # Runs take four steps each; weighting their progress keeps many of them in flight and
        # reaching the write while uploads keep changing under them.
        advance_another_run = advance_a_run
        advance_a_third_run = advance_a_run

        @invariant()
        def consistent(self) -> None:
            rig.assert_invariants()

        def teardown(self) -> None:
            while self.runs:  # runs still in flight finish
                step, work = self.runs.pop()
                result = getattr(rig, step)(work)
                following = {"extract": "chunk", "chunk": "compute", "compute": "write_points"}.get(step)
                if following:
                    self.runs.append((following, result if step == "compute" else work))
            rig.settle()
            rig.assert_converged()
            sent = rig.sent_texts()
            assert not sent or max(sent.values()) == 1, [t for t, n in sent.items() if n > 1]

    run_state_machine_as_test(
        Storm,
        settings=settings(
            max_examples=60, stateful_step_count=60, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )


def _reset(rig) -> None:  # noqa: ANN001
    """A clean slate per example (a fresh database per example would dominate the run time)."""
    with rig.engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE documents, document_versions, chunks, embedding_cache"))
    if rig.store.exists():
        rig.store.client.delete_collection(rig.store.collection)
    shutil.rmtree(rig.inbox)
    rig.inbox.mkdir()
    rig.texts_before = Counter(rig.server.texts)
