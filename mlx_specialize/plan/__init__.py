"""`mlxspec plan`: which method to invest the generic pre-training in, from the budgets.

    fit.py      the planner's model, fitted on a study's results lines
    predict.py  a method's predicted quality (with its interval) and costs
    planner.py  the plan: every method at its best affordable budget, the recommendation
    budgets.py  budgets as written (FLOPs, tokens, presets) and a domain's xz bits per byte
    validate.py leave one target out: how well it predicts a domain it never saw
    figure.py   the plan as a figure
"""

from .fit import fit_results
from .planner import Budgets, make_plan, plan
from .predict import costs, difference, predict

__all__ = ["Budgets", "costs", "difference", "fit_results", "make_plan", "plan", "predict"]
