"""The transfers ``inflora experiment`` runs: SST-2 source runs, then one target task.

sst2-to-rt keeps the source head (both tasks are binary sentiment) and reports RT test accuracy
also without the sentences SST-2 train contains. sst2-to-trec puts a new 6-class head on the source
backbone, so forgetting is SST-2 validation accuracy of the adapted backbone under the source
model's own head (``training.source_head``); TREC questions share nothing with SST-2, so there is
no decontaminated metric.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Transfer:
    name: str
    target: str  # the task diagnosed (validation, train) and trained on
    label: str  # how reports name it
    decontaminate: str | None  # also score the target test without this task's train rows
    new_head: bool  # a fresh head for the target's labels; forgetting with the source head

    def metrics(self) -> tuple[str, ...]:
        """The test metrics its tables and claims are judged on."""
        return ("test", "test_decontaminated") if self.decontaminate else ("test",)


TRANSFERS = {
    t.name: t
    for t in (
        Transfer("sst2-to-rt", "rotten_tomatoes", "RT", "sst2", False),
        Transfer("sst2-to-trec", "trec", "TREC", None, True),
    )
}
DEFAULT = "sst2-to-rt"


def get_transfer(name: str) -> Transfer:
    if name not in TRANSFERS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of: {', '.join(TRANSFERS)}")
    return TRANSFERS[name]
