"""``raylab audit``: how vulnerable is one model to universal perturbations made without any medical image?

The paper's protocol (Sections 2.2-2.3) on one classifier, at a size the user picks (:data:`BUDGETS`):

1. The model is checked on the clean test set beside always answering its most frequent class
   (:class:`raylab.evaluation.ModelCheck`): a model near that baseline is warned about, since a constant answer is
   fooled by nothing.
2. Each method's step (ε for the paper's, the first step for the stochastic-gradient one) and p are chosen by the
   paper's grid search at the headline ζ, scored by R_f on the medical **validation** split, never the test split
   (:func:`raylab.selection.select_on_validation`, which the reproduction uses too).
3. Non-targeted UAPs over the ζ grid from the natural images and from the model's own training images (the upper
   reference), each evaluated beside the random control of the same radius (the lower reference); targeted UAPs
   toward every class at the headline ζ (R_s); every one with both methods and several seeds of the image order,
   so that every headline number is a mean ± sd. The stronger method is the headline: an audit that reports only
   the weaker attack calls a model safer than it is. For the same reason the verdict also gives the strongest of
   the seeds' UAPs, kept by its R_f on validation (:func:`raylab.selection.kept_on_validation`): seeds can land in different
   directions, and the mean then under-states what an attacker who makes a few UAPs gets. Targeted UAPs keep
   theirs the same way, by R_s toward their class on validation.
4. The predicted-label composition of the natural images (the paper's Tables S1-S3), which explains which targets
   are easy.

Every UAP is one :func:`raylab.run.run_uap` (the models and images loaded once), so one record in
``<out>/uaps/<trial>/`` and one Parquet row (sweep ``audit-<name>``), written as it finishes: a rerun skips what is
done, and a rerun with other settings in the same ``--out`` is refused. With ``ray=True`` the UAPs run as Ray tasks
spread over the cluster (:func:`raylab.engine.sharding.ray_map`). :mod:`raylab.audit.verdict` words the verdict and
findings, :mod:`raylab.audit.report` renders the report (HTML with its figures inline, Markdown, PNG, JSON).

One concern per module: :mod:`.config` (the budgets and the audit's configuration), :mod:`.plan` (its UAPs as
jobs), :mod:`.state` (the model, data and sources loaded and checked before any UAP), :mod:`.runner` (the steps in
order: selection, the UAPs here or on Ray, the summary and the report), :mod:`.summary` (``audit.json`` from the
rows), :mod:`.verdict` (the words), :mod:`.figures` and :mod:`.report` (the page).
"""

from .config import BUDGETS, SOURCES, AuditConfig, Budget
from .plan import Job, audit_targets, plan_jobs
from .runner import run_audit

__all__ = ["BUDGETS", "SOURCES", "AuditConfig", "Budget", "Job", "audit_targets", "plan_jobs", "run_audit"]
