"""The SST-2 → Rotten Tomatoes / TREC experiments: profiles, cached units, statistics, claims, report."""

from .claims import judge
from .harness import Plan, run_experiment, run_logged
from .profiles import PROFILES, Profile, get_profile
from .results import aggregate
from .stats import paired, summary, verdict

__all__ = [
    "PROFILES",
    "Plan",
    "Profile",
    "aggregate",
    "get_profile",
    "judge",
    "paired",
    "run_experiment",
    "run_logged",
    "summary",
    "verdict",
]
