"""Knowledge amalgamation (Shen et al., AAAI 2019): one compact student from several teachers, no labels."""

from transplant.amalgamate.config import AmalgamationConfig, AmalgamationResult, StudentConfig, Teacher
from transplant.amalgamate.engine import amalgamate, distill_logits_baseline
from transplant.amalgamate.student import StudentBlock, StudentFeatures, build_head, count_params
from transplant.amalgamate.targets import merged_logits, stage_for_block, union_classes
from transplant.errors import Cancelled

__all__ = [
    "AmalgamationConfig",
    "AmalgamationResult",
    "Cancelled",
    "StudentBlock",
    "StudentConfig",
    "StudentFeatures",
    "Teacher",
    "amalgamate",
    "build_head",
    "count_params",
    "distill_logits_baseline",
    "merged_logits",
    "stage_for_block",
    "union_classes",
]
