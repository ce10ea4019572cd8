"""Loaded source models kept between runs: several runs from one checkpoint load it once.

The experiment trains every target strategy from the same source checkpoint (per seed and
regime); each ``finetune`` loading it again from disk is the same model each time. A run's
identity includes the random state loading leaves behind (``model_factory`` seeds, then a new
head is drawn), so the cache keeps that state beside the model and restores it with each copy:
a run given a copy goes on exactly as one that loaded the checkpoint itself.
"""

from __future__ import annotations

import copy
from typing import Callable, Hashable

from .checkpoint import rng_state, set_rng_state


class ModelCache:
    """``get(key, load)``: a fresh copy of what ``load()`` returned for ``key``, RNG state included.

    Only the ``keep`` most recent keys stay loaded (the experiment needs one: the current source).
    ``loads`` counts the calls to ``load``, so a caller can see what was reused."""

    def __init__(self, keep: int = 1):
        self.keep = keep
        self.loads = 0
        self._entries: dict[Hashable, tuple[object, object, dict]] = {}

    def get(self, key: Hashable, load: Callable[[], tuple[object, object]]) -> tuple[object, object]:
        if key not in self._entries:
            model, tok = load()
            self.loads += 1
            self._entries[key] = (model, tok, rng_state())
            while len(self._entries) > self.keep:
                self._entries.pop(next(iter(self._entries)))
            model_copy = copy.deepcopy(model)  # the kept model is never trained
        else:
            model, tok, state = self._entries[key]
            model_copy = copy.deepcopy(model)
            set_rng_state(state)
        return model_copy, tok
