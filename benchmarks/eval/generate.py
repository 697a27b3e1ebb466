"""The larger generated evaluation set: 120 error runbooks that look alike (one per component
and symptom, each with its own error code and ticket), and labelled queries over them: a third
exact identifiers, a third paraphrases of the symptom (other words for the component and what
went wrong), a third questions in the runbook's words.

Deterministic: the same files and queries every time.

    python benchmarks/eval/generate.py OUT_DIR   # OUT_DIR/corpus/<kb>/..., OUT_DIR/queries.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COMPONENTS = [
    ("database replica", "secondary database server"),
    ("message queue", "job broker"),
    ("cache cluster", "in-memory key store"),
    ("object storage bucket", "blob store"),
    ("TLS gateway", "HTTPS front door"),
    ("search index", "full-text lookup service"),
    ("job scheduler", "cron runner"),
    ("metrics pipeline", "telemetry collector"),
    ("authentication service", "login backend"),
    ("payment worker", "billing processor"),
]
# (title, what the runbook says happened, the same in other words, the fix)
SYMPTOMS = [
    ("disk full", "the {c} ran out of disk space and stopped accepting writes",
     "no free storage left on the {s}, so nothing new can be saved", "delete old snapshots and grow the volume"),
    ("memory exhausted", "the {c} was killed by the kernel after using all of its memory",
     "the {s} crashed because it used up its RAM", "lower the batch size and raise the memory limit"),
    ("connection refused", "clients of the {c} get connection refused on every request",
     "nobody can reach the {s}; every attempt is rejected", "restart the listener and check the firewall rules"),
    ("high latency", "requests to the {c} take over ten seconds to answer",
     "the {s} has become extremely slow to respond", "add a replica and move hot keys off the busy node"),
    ("clock skew", "the {c} rejects tokens because its clock drifted by minutes",
     "time on the {s} is wrong, so credentials look expired", "restart the time sync daemon and resync the clock"),
    ("certificate expired", "the {c} certificate passed its expiry date",
     "the {s} is presenting an out-of-date security certificate", "renew the certificate and reload the service"),
    ("permission denied", "the {c} cannot read its own data directory after a deploy",
     "the {s} lost access rights to its files after a release", "restore the owner and mode of the data directory"),
    ("version mismatch", "the {c} refuses clients built against an older protocol version",
     "the {s} rejects callers that use an outdated protocol", "roll the clients forward or pin the old protocol"),
    ("duplicate messages", "the {c} delivers the same message two or three times",
     "the {s} hands out identical events more than once", "turn on idempotency keys and deduplicate on read"),
    ("stuck backlog", "work piles up in the {c} and nothing is processed",
     "the {s} has a growing pile of pending work that never moves", "drain the stuck consumer and restart it"),
    ("corrupted index", "the {c} returns wrong rows after an unclean shutdown",
     "the {s} gives incorrect results since it crashed", "rebuild the index from the last good snapshot"),
    ("rate limited", "the {c} answers HTTP 429 to most callers",
     "the {s} keeps telling callers to slow down and back off", "raise the quota or spread the load over time"),
]
KB = "incidents"


def documents() -> dict[str, str]:
    out = {}
    for n, ((component, _), (title, said, _, fix)) in enumerate(
        (c, s) for c in COMPONENTS for s in SYMPTOMS
    ):
        code, ticket = f"ERR-{6000 + n}", f"INC-{3000 + n}"
        out[f"runbooks/{code.lower()}.md"] = (
            f"# {code}: {component} {title}\n\n## Symptom\n\nThe monitor raises {code} when {said.format(c=component)}. "
            f"The on-call engineer is paged and the incident is tracked as {ticket}.\n\n"
            f"## Fix\n\nTo recover, {fix}. Then confirm on the dashboard that {code} has cleared and close {ticket}.\n"
        )
    return out


def queries() -> list[dict[str, str]]:
    out = []
    for n, ((component, synonym), (title, said, paraphrase, fix)) in enumerate(
        (c, s) for c in COMPONENTS for s in SYMPTOMS
    ):
        expect = f"{KB}/runbooks/err-{6000 + n}.md"
        # Every third document, each kind in turn: 40 queries, about 13 of each kind.
        if n % 3:
            continue
        kind = ("identifier", "paraphrase", "question")[(n // 3) % 3]
        if kind == "identifier":
            query = f"ERR-{6000 + n}" if n % 2 else f"what is INC-{3000 + n} about"
        elif kind == "paraphrase":
            query = paraphrase.format(s=synonym)
        else:
            query = f"how do I fix {component} {title}"
        out.append({"query": query, "expect": expect, "kind": kind})
    return out


def main() -> None:
    target = Path(sys.argv[1])
    for path, text in documents().items():
        file = target / "corpus" / KB / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    with open(target / "queries.jsonl", "w") as f:
        for q in queries():
            f.write(json.dumps(q) + "\n")


if __name__ == "__main__":
    main()
