"""Network pruning (Han et al. 2015): masks in the model, criteria, iterative schedules,
sensitivity analysis. See masks.py for how a pruned weight is kept dead."""

from .apply import prune_model, resolve_criteria
from .criteria import Criterion, GlobalMagnitude, StdThreshold, TargetSparsity, make_criterion
from .masks import (
    MASK,
    LayerStats,
    apply_masks,
    current_masks,
    dropout_for,
    export_sparse,
    mask_name,
    masked_modules,
    module_masks,
    reapply_masks,
    remove_masks,
    scale_dropout,
    set_mask,
    sparsity_report,
    total_kept,
)
from .schedule import PruneReport, RoundReport, iterative_prune, ramp
from .sensitivity import SensitivityResult, plot_sensitivity, sensitivity_sweep, sparsities_for_drop

__all__ = [
    "MASK", "Criterion", "GlobalMagnitude", "LayerStats", "PruneReport", "RoundReport", "SensitivityResult",
    "StdThreshold", "TargetSparsity", "apply_masks", "current_masks", "dropout_for", "export_sparse",
    "iterative_prune", "make_criterion", "mask_name", "masked_modules", "module_masks",
    "plot_sensitivity", "prune_model", "ramp", "reapply_masks", "remove_masks", "resolve_criteria",
    "scale_dropout", "sensitivity_sweep", "set_mask", "sparsities_for_drop", "sparsity_report", "total_kept",
]
