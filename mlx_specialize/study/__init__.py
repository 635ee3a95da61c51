"""`mlxspec study`: the paper's grid on any corpora, cached and resumable, results as data.

    spec.py    the TOML spec and its grid of cells (method x budget x domain-set size x
               target x seed), each with a key that names no path
    run.py     run the cells not yet in the results file, one JSON line each
    report.py  tables from results files alone
    figures.py their figures (matplotlib PNGs)
"""

from .report import report_study
from .run import check_runnable, read_results, run_study, study_status
from .spec import Cell, Study, load_study, spec_floors

__all__ = ["Cell", "Study", "check_runnable", "load_study", "read_results", "report_study", "run_study",
           "spec_floors", "study_status"]
