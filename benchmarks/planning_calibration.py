"""The dose per unit beamlet weight of pyRadPlan's generic 6 MV machine, from which `rtgen plan` turns
weights into monitor units: a 10 x 10 cm field in water, isocentric at 10 cm depth (SSD 90 cm).

    OPENBLAS_NUM_THREADS=1 python benchmarks/planning_calibration.py

Prints the central-axis depth dose per unit weight of every open 5 mm beamlet, its maximum and that
maximum moved to SSD 100 cm by the inverse-square law (the reference conditions of 1 cGy per MU).
Needs pyRadPlan (docs/planning.md). About 20 s on one core.
"""

from __future__ import annotations

import numpy as np

from rtgen.data.records import Patient
from rtgen.planning.engine import BeamSet, compute_influence, patient_origin


def main() -> None:
    shape, spacing = (48, 48, 48), (5.0, 5.0, 5.0)  # a 24 cm water cube
    target = np.zeros(shape, bool)
    target[10:30, 14:34, 14:34] = True  # 10 cm, centred at 10 cm depth below the anterior surface (gantry 0)
    water = Patient("water", np.zeros(shape, np.int16), None, np.ones(shape, bool), {"PTV70": target}, spacing)
    inf = compute_influence(water, BeamSet(gantry_angles=(0.0,), bixel_mm=5.0), patient_origin(water))
    weights = ((np.abs(inf.x_mm) < 50) & (np.abs(inf.y_mm) < 50)).astype(float)  # a 10 x 10 cm field
    axis = inf.dose(weights)[:, shape[1] // 2, shape[2] // 2]
    depth = (np.arange(shape[0]) + 0.5) * spacing[0]
    print("depth (mm)  dose per unit weight (Gy)")
    for z, d in zip(depth[:24:2], axis[:24:2]):
        print(f"{z:9.1f}  {d:.3f}")
    top = int(np.argmax(axis))
    ssd, dmax = 900.0, depth[top]
    at_100 = axis[top] * ((ssd + dmax) / (1000.0 + dmax)) ** 2
    print(f"maximum {axis[top]:.3f} Gy at {dmax:.1f} mm (SSD 90 cm); at SSD 100 cm: {at_100:.3f} Gy per unit weight, "
          f"i.e. {100 * at_100:.0f} MU per unit weight at 1 cGy/MU")


if __name__ == "__main__":
    main()
