"""``raylab sweep``: Ray Tune grids over the UAP method, ε (lr), p, ζ, UAP source, target, model and i_max.

The paper picked ε and p per dataset by grid search and swept ζ (2-16 %) for
every image source and architecture (Section 2.2). One trial is one UAP, a
plain function (:func:`uap_trial`): the engine (:mod:`raylab.engine`) for a
shard source, the single-machine audit for the medical training set or the
random control. The sweep's fixed settings reach the trials through
``tune.with_parameters``; only the axes are Tune's search space. Each trial
declares its own resources (a placement group: the trial, plus a bundle per
engine worker and per reader for a shard source only), reports the running
rate over its natural-image stream every few rounds and its test-set rate at
the end (Tune's ``metric="score"``, ``mode="max"``), and writes its row into
the results dataset (:mod:`raylab.results`). ``early_stop`` stops trials whose
running rate trails the others' of the same ζ, source, target, model and i_max
(:func:`grouped_asha`). An interrupted sweep resumes with Tune's restore;
finished trials are not redone, rewritten rows replace their own file, and a
rerun with other settings under the same name is refused.
"""

from .asha import GROUP_AXES, grouped_asha
from .config import RESUMABLE_CHANGES, SEARCHES, SweepConfig
from .space import axes_of, param_space, trial_count
from .trial import METRIC, MODE, StreamReporter, final_report, uap_trial
from .tuner import Tally, outcome, run_sweep, tally

__all__ = ["GROUP_AXES", "METRIC", "MODE", "RESUMABLE_CHANGES", "SEARCHES", "StreamReporter", "SweepConfig", "Tally",
           "axes_of", "final_report", "grouped_asha", "outcome", "param_space", "run_sweep", "tally", "trial_count",
           "uap_trial"]
