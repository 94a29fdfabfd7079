"""``raylab bench``: images/s of the UAP modes and of the engine, measured side by side in one run.

:mod:`.modes` (the core's modes beside ART and their bare kernels), :mod:`.engine` (``--engine``), :mod:`.kernels`
(the bare kernels and FLOPs), :mod:`.profile` (``--profile``), :mod:`.figures` (timing and the JSON).
"""

from .engine import EngineBenchConfig, run_engine_bench
from .figures import cpu_name, timed, write_figures
from .kernels import bare_kernel, bare_sgd_kernel, update_flops
from .modes import BenchConfig, decision_agreement, run_bench
from .profile import profile_update

__all__ = ["BenchConfig", "EngineBenchConfig", "bare_kernel", "bare_sgd_kernel", "cpu_name", "decision_agreement",
           "profile_update", "run_bench", "run_engine_bench", "timed", "update_flops", "write_figures"]
