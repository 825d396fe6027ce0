"""Rewards of generated doses: DiffKT3D's clinical scorecard (sec. 3.4) and its eq. (10) optimality.

The scorecard itself is pure NumPy dosimetry and lives in `rtgen.dosimetry.scorecard`, below the
tasks, because the DiffKT3D task scores its own samples with it (best-of-N, ScardNFT); this module
is where evaluation code and users find the reward API.
"""

from rtgen.dosimetry.scorecard import (  # noqa: F401
    Criterion,
    CriterionResult,
    Scorecard,
    ScorecardError,
    ScorecardResult,
    optimality_probability,
    reward,
    reward_terms,
)
