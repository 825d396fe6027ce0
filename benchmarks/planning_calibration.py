"""The dose per unit beamlet weight of pyRadPlan's generic 6 MV machine, from which `rtgen plan` turns
weights into monitor units: a 10 x 10 cm field in water, isocentric at 10 cm depth (SSD 90 cm).

    OPENBLAS_NUM_THREADS=1 python benchmarks/planning_calibration.py
    python benchmarks/planning_calibration.py --smoke

Prints the central-axis depth dose per unit weight of every open 5 mm beamlet, its maximum and that
maximum moved to SSD 100 cm by the inverse-square law (the reference conditions of 1 cGy per MU).
Needs pyRadPlan (docs/planning.md; without it the script says so and stops). About 20 s on one core.
`--smoke` uses 10 mm voxels and beamlets.
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np

from rtgen.data.records import Patient
from rtgen.planning.engine import BeamSet, compute_influence, patient_origin


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="10 mm voxels and beamlets (seconds)")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("pyRadPlan") is None:
        print("pyRadPlan is not installed (see docs/planning.md): nothing measured")
        return
    step = 10.0 if args.smoke else 5.0
    n = int(round(240 / step))  # a 24 cm water cube
    shape, spacing = (n, n, n), (step, step, step)
    target = np.zeros(shape, bool)
    a, b = int(round(50 / step)), int(round(150 / step))  # 10 cm, centred at 10 cm depth below the anterior surface
    c0, c1 = n // 2 - int(round(50 / step)), n // 2 + int(round(50 / step))
    target[a:b, c0:c1, c0:c1] = True
    water = Patient("water", np.zeros(shape, np.int16), None, np.ones(shape, bool), {"PTV70": target}, spacing)
    inf = compute_influence(water, BeamSet(gantry_angles=(0.0,), bixel_mm=step), patient_origin(water))
    weights = ((np.abs(inf.x_mm) < 50) & (np.abs(inf.y_mm) < 50)).astype(float)  # a 10 x 10 cm field
    axis = inf.dose(weights)[:, n // 2, n // 2]
    depth = (np.arange(n) + 0.5) * step
    print(f"pyRadPlan generic 6 MV, 10 x 10 cm field of {step:g} mm beamlets at unit weight, SSD 90 cm")
    print("depth (mm)  dose per unit weight (Gy)")
    for z, d in list(zip(depth, axis))[: int(120 / step):max(1, int(10 / step))]:
        print(f"{z:9.1f}  {d:.3f}")
    top = int(np.argmax(axis))
    ssd, dmax = 900.0, depth[top]
    at_100 = axis[top] * ((ssd + dmax) / (1000.0 + dmax)) ** 2
    print(f"maximum {axis[top]:.3f} Gy at {dmax:.1f} mm (SSD 90 cm); at SSD 100 cm: {at_100:.3f} Gy per unit weight, "
          f"i.e. {100 * at_100:.0f} MU per unit weight at 1 cGy/MU")


if __name__ == "__main__":
    main()
