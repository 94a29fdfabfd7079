"""The audit's budgets (:data:`BUDGETS`) and its configuration (:class:`AuditConfig`), validated once."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MEDICAL, METHODS, check, check_device, check_medical, check_model, finite, option

#: The two image sources of an audit: the natural images under audit and the model's own training images (the upper
#: reference). The random control (the lower reference) is evaluated beside every UAP at the same radius.
SOURCES = ("natural", "train")


@dataclass(frozen=True)
class Budget:
    """How big an audit is: the ζ grid, the seeds, the images, the selection grids and the passes."""

    zetas: tuple[float, ...]
    seeds: int
    natural_limit: int | None
    train_limit: int | None
    eps_grid: tuple[float, ...]
    p_grid: tuple[str, ...]
    lr_grid: tuple[float, ...]
    passes: int
    sgd_epochs: int
    batch_size: int


#: ``quick`` (minutes on a laptop CPU), ``standard`` (an hour or so on a CPU, minutes on a GPU), ``paper`` (the
#: paper's scale: 100,000 natural images, its ε grid and ζ range, five seeds; a GPU cluster).
BUDGETS = {
    "quick": Budget(zetas=(0.02, 0.04, 0.08), seeds=3, natural_limit=300, train_limit=300,
                    eps_grid=(0.004, 0.008, 0.016, 0.032),
                    p_grid=("2",), lr_grid=(1.0,), passes=2, sgd_epochs=3, batch_size=32),
    "standard": Budget(zetas=(0.02, 0.04, 0.06, 0.08, 0.12), seeds=3, natural_limit=1000, train_limit=1000,
                       eps_grid=(0.002, 0.004, 0.008, 0.016), p_grid=("2", "inf"), lr_grid=(0.5, 1.0),
                       passes=2, sgd_epochs=5, batch_size=32),
    "paper": Budget(zetas=(0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.16), seeds=5, natural_limit=100_000, train_limit=None,
                    eps_grid=(0.0005, 0.0013, 0.0026, 0.005), p_grid=("2", "inf"), lr_grid=(1.0,),
                    passes=1, sgd_epochs=1, batch_size=256),
}


#: Settings a resumed audit may change: where and how its UAPs run.
RESUMABLE_CHANGES = ("out", "ray", "cpus_per_uap", "gpus_per_uap")


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """One audit (``raylab audit``, ``jobs/audit.py``): the model, its data, the natural images and the budget."""

    model: str = option(help="the classifier: a raylab checkpoint, or with --card the file the card describes (state "
                             "dict, TorchScript, torch.export or ONNX)")
    natural: Path = option(help="natural images to make the UAPs from: a folder of photos or a shard location "
                                "(`raylab shard`)")
    out: Path = option(help="output folder (rerun with the same one to resume)")
    card: Path | None = option(None, "the model card of a model trained elsewhere (see `raylab import-model`)")
    medical: Path = option(DEFAULT_MEDICAL, "the medical dataset the model classifies (.npz or CSV folder)", flag="--data")
    budget: str = option("quick", "quick (minutes on a CPU), standard, or paper (the paper's scale, a GPU cluster)",
                         choices=tuple(BUDGETS))
    zeta: float = option(0.04, "the budget of the verdict, as a ratio of the mean Lp norm of the training images")
    zetas: tuple[float, ...] | None = option(None, "the ζ grid (default: the budget's)", parse=float)
    seeds: int | None = option(None, "how many seeds of the image order per UAP: seeds 0..N-1 (default: the budget's; at "
                                                "least 2)")
    limit: int | None = option(None, "natural images to use, a seeded sample (default: the budget's)")
    methods: tuple[str, ...] = option(METHODS, "UAP methods: paper, sgd (both by default; the stronger is the headline)",
                                      choices=METHODS)
    targets: tuple[str, ...] = option(("all",), "target classes for targeted UAPs, names or indices ('all': every "
                                                "class; 'none': no targeted UAPs)")
    batch_size: int | None = option(None, "images per update (default: the budget's)")
    name: str | None = option(None, "the audit's name in the results (default: the model file's name)")
    results: str | None = option(None, "Parquet results location, shared by audits to compare (default <out>/results)")
    device: str = option("cpu", "cpu or cuda[:N]")
    amp: bool = option(False, "mixed-precision forward passes")
    ray: bool = option(False, "run the UAPs as Ray tasks spread over the cluster (the output must be reachable from "
                              "every node)")
    cpus_per_uap: float = option(1.0, "with --ray: CPUs per UAP task")
    gpus_per_uap: float = option(1.0, "with --ray and --device cuda: the share of a GPU each UAP task asks for (0.25: "
                                      "four UAPs share one GPU)")

    def __post_init__(self) -> None:
        for name in ("model", "natural", "out", "medical", "card"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else (str(value) if name == "model" else Path(value)))
        check(self.budget in BUDGETS, f"budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        check_model(self.model)
        check(self.card is None or Path(self.card).is_file(), f"model card not found: {self.card}")
        check_medical(self.medical)
        check(self.natural.is_dir(), f"natural images: {self.natural} is not a folder of photos or a shard location")
        for z in (self.zeta, *(self.zetas or ())):
            finite("zeta", z)
            check(0 < z <= 1, f"zeta must be in (0, 1] (a ratio, e.g. 0.04 for 4%), got {z}")
        check(self.seeds is None or self.seeds >= 2, f"seeds must be >= 2 (one seed is not a result), got {self.seeds}")
        check(self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}")
        check(self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(bool(self.methods) and set(self.methods) <= set(METHODS), f"methods must be among {METHODS}, got {self.methods}")
        check(bool(self.targets), "targets: give class names or indices, 'all' or 'none'")
        check(self.name is None or (bool(self.name) and all(c.isalnum() or c in "._-" for c in self.name)),
              f"name may hold letters, digits and . _ - only, got {self.name!r}")
        check_device(self.device)
        check(self.cpus_per_uap > 0, f"cpus_per_uap must be > 0, got {self.cpus_per_uap}")
        check(0 < self.gpus_per_uap <= 1 or self.gpus_per_uap == int(self.gpus_per_uap),
              f"gpus_per_uap must be a share of one GPU in (0, 1] or a whole number, got {self.gpus_per_uap}")

    @property
    def plan(self) -> Budget:
        """The budget with this audit's overrides; the headline ζ is always on the grid."""
        b = BUDGETS[self.budget]
        zetas = tuple(sorted({*(self.zetas or b.zetas), self.zeta}))
        return dataclasses.replace(b, zetas=zetas, seeds=self.seeds or b.seeds,
                                   natural_limit=self.limit or b.natural_limit, batch_size=self.batch_size or b.batch_size)

    @property
    def sweep(self) -> str:
        """The results sweep every UAP of this audit is a row of."""
        return f"audit-{self.name or Path(self.model).stem}"

    @property
    def uap_task(self) -> tuple[float, float]:
        """The CPUs and GPUs one UAP task asks Ray for under ``--ray``: a GPU share only under ``--device cuda``
        (Ray hides every GPU from a task that reserved none)."""
        return self.cpus_per_uap, self.gpus_per_uap if self.device.startswith("cuda") else 0.0

    @property
    def results_location(self) -> str:
        return self.results or str(self.out / "results")

    def identity(self) -> dict[str, Any]:
        """What a resumed audit must share with the audit it resumes (the resources may change)."""
        return {k: v for k, v in asdict(self).items() if k not in RESUMABLE_CHANGES}
