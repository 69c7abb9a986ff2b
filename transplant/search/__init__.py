"""Architecture and weight search for adapters (`"adapter": "auto"`).

- space.py     SearchSpace and Candidate: depth × width × kernel × skip, each child an AdapterConfig.
- supernet.py  SuperNet: one-shot weight-shared super-network, exact child extraction.
- auto.py      run_auto_transplant: super-net → search (+ warm starts) → fine-tune.
- stages.py    the stages auto chains (super-net training, scoring, resumable training); select.py the race.
- lift.py      grow a registered adapter into a larger child without changing its function.
"""

from transplant.search.auto import AutoBudget, held_out_score, run_auto_transplant, search_children
from transplant.search.space import Candidate, SearchSpace
from transplant.search.supernet import SuperNet

__all__ = [
    "AutoBudget",
    "Candidate",
    "SearchSpace",
    "SuperNet",
    "held_out_score",
    "run_auto_transplant",
    "search_children",
]
