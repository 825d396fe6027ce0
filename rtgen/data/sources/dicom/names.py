"""ROI names: the alias table that maps a clinic's ROI names ("PTV_7000", "Parotid_L", "External") to
rtgen's structure names, and the matching rule. Kept apart from the DICOM parsing because users
extend the table (an alias file) and other tools may want to match names without reading DICOM.

Organs and the body are looked up in `DEFAULT_ALIASES` (AAPM TG-263 names and common variants),
compared after `normalise_roi_name`. Targets are read by a rule instead (`ptv_dose_gy`): a name that
is a PTV and nothing else (PTV_7000, PTVp1_7000, PTV70, PTV_70Gy, PTV_High) gets its dose level from
the RTPLAN's prescription when there is one, else from the number in its name, and becomes the
nearest of rtgen's levels (PTV56, PTV63, PTV70; `nearest_level`). Derived structures (PRVs, rings,
optimisation and evaluation structures, margins, "minus" structures) match nothing: a name matches
only when it is an alias or a PTV name as a whole.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from rtgen.core.errors import DataError, RtgenWarning
from rtgen.core.structures import PRESCRIPTION_GY, STRUCTURES, TARGETS

BODY = "possible_dose_mask"
"""The alias-table key of the body/external ROI, which becomes the possible dose mask."""

DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {
    "Brainstem": ("Brainstem", "BrainStem", "Brain_Stem", "Brain Stem", "Brainstm", "BStem", "Tronc_Cerebral",
                  "Hirnstamm"),
    "SpinalCord": ("SpinalCord", "Spinal_Cord", "Spinal Cord", "Cord", "Spinal", "Myelon", "Medulla_Spinalis",
                   "Moelle", "Moelle_Epiniere", "Midollo_Spinale"),
    "RightParotid": ("Parotid_R", "Parotid R", "R_Parotid", "R Parotid", "RParotid", "Rt_Parotid", "Rt Parotid",
                     "Parotid_Rt", "Right_Parotid", "Parotid_Right", "Glnd_Parotid_R", "Parotid_D", "Parotid_Dx",
                     "Parotide_D", "Parotis_R", "Parotis_re"),
    "LeftParotid": ("Parotid_L", "Parotid L", "L_Parotid", "L Parotid", "LParotid", "Lt_Parotid", "Lt Parotid",
                    "Parotid_Lt", "Left_Parotid", "Parotid_Left", "Glnd_Parotid_L", "Parotid_G", "Parotid_Sx",
                    "Parotide_G", "Parotis_L", "Parotis_li"),
    "Esophagus": ("Esophagus", "Oesophagus", "Esophag", "Oesophag", "Esoph", "Oesoph", "Oesophage", "Esofago"),
    "Larynx": ("Larynx", "Laringe"),
    "Mandible": ("Mandible", "Bone_Mandible", "Mandible_Bone", "Mandibula", "Jaw"),
    BODY: ("External", "Body", "BODY", "Skin", "Outline", "External_Contour", "Body_Contour", "Body_Outline",
           "possible_dose_mask"),
}
"""rtgen name -> ROI names, compared after `normalise_roi_name` (so "Parotid_L" also reads "parotid l",
"PAROTID-L" ...). TG-263 first, then common variants (Lt/Rt, D/G and Dx/Sx for right/left in
French and Italian exports). Left out on purpose, because TG-263 names them as other structures:
SpinalCanal (the canal, larger than the cord), Brainstem_Core and Brainstem_Surf, Larynx_Glottic,
Larynx_SG and Glottis (parts of the larynx), Parotids (both glands in one ROI), Medulla (the medulla
oblongata is part of the brainstem). Targets are not listed: see `ptv_dose_gy`. Users extend the
table with an alias file (`load_aliases`)."""

ROI_LEVEL_TOLERANCE = 0.10
"""A PTV prescribed within 10 % of one of rtgen's levels (56, 63, 70 Gy) is read as that level (with
a warning when more than 1 % off); further off, it is not read as a target (map it in an alias file
to use it anyway). rtgen's models learned doses of these three levels only."""

_TARGET_NAME = re.compile(
    r"ptv(?:p|n|sb)?"  # TG-263: PTV, PTVp (primary), PTVn (nodal), PTVsb (surgical bed)
    r"(?:\d(?=_|$))?"  # an index: PTV1, PTVp2_7000 (one digit, then a separator or the end)
    r"(?:_?(?:high|mid|low|int|intermediate|hr|ir|lr|boost))?"  # a level word: PTV_High, PTV_Low
    r"(?:_?(?P<dose>\d+(?:[.,]\d+)?)_?(?P<unit>c?gy)?)?"  # a dose: PTV_7000 (cGy), PTV70, PTV_70Gy
)


def ptv_dose_gy(name: str) -> float | None | bool:
    """What a ROI name says as a target: False if it is not a PTV, else the dose in its name in Gy
    (None when it holds none: PTV, PTV1, PTV_High).

    A PTV name is "PTV", a TG-263 classifier (p, n, sb) and index, a level word (High, Mid, Low ...)
    and a dose, each optional, and nothing else: PTV_7000 (cGy: a number from 1000 on), PTV70,
    PTV_70Gy, PTV 69.96 Gy, PTVp1_7000cGy. Anything more makes it another structure: PTV70_opt,
    zPTV70, Ring_PTV70, PTV70_eval, PTV70-5mm, PTV56_minus_PTV70, PTV70_PRV; so are CTVs and GTVs.
    """
    s = re.sub(r"[\s_\-]+", "_", str(name).strip().lower()).strip("_")
    m = _TARGET_NAME.fullmatch(s)
    if m is None:
        return False
    if m["dose"] is None:
        return None
    value = float(m["dose"].replace(",", "."))
    if m["unit"] == "cgy" or (m["unit"] is None and 1000 <= value < 15000):
        value /= 100.0
    return value if 10.0 <= value < 150.0 else None  # PTV_1, PTV_2: an index, not a dose


def nearest_level(dose_gy: float) -> tuple[str | None, float]:
    """(the rtgen target nearest to a prescription, or None if none is within ROI_LEVEL_TOLERANCE;
    the relative difference)."""
    level = min(TARGETS, key=lambda t: abs(PRESCRIPTION_GY[t] - dose_gy))
    off = abs(PRESCRIPTION_GY[level] - dose_gy) / PRESCRIPTION_GY[level]
    return (level if off <= ROI_LEVEL_TOLERANCE + 1e-9 else None), off


def normalise_roi_name(name: str) -> str:
    """Lowercase, drop a dose unit after a number ("70 Gy" -> "70") and every space, _, - and other
    separator, so that "PTV_70", "PTV70" and "ptv 70 Gy" all read "ptv70"."""
    s = str(name).strip().lower()
    s = re.sub(r"(?<=\d)[\s_\-]*c?gy\b", "", s)
    s = re.sub(r"[^0-9a-z.]", "", s)
    return s.rstrip(".")


def load_aliases(path: str | Path | Mapping | None = None) -> dict[str, tuple[str, ...]]:
    """The default alias table (names normalised), extended by a JSON or YAML file {rtgen name: [ROI
    names]} if given (or by such a mapping itself).

    Keys are rtgen structure names (PTV56 .. Mandible) or "possible_dose_mask" (also accepted: "body",
    "external") for the body ROI. A file's aliases are tried before the defaults and before the PTV
    rule, so a clinic can also redirect a name the default table already knows, or give a target its
    level whatever its name or the plan says (`PTV63: [PTV_66]`, `PTV70: [Volume1]`).
    """
    table = {k: tuple(dict.fromkeys(normalise_roi_name(a) for a in v)) for k, v in DEFAULT_ALIASES.items()}
    if path is None:
        return table
    if isinstance(path, Mapping):
        data, path = dict(path), Path("aliases")
    else:
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(path, f"alias file cannot be read ({e})") from None
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as e:  # noqa: BLE001 - json and yaml raise their own error types
            raise DataError(path, f"alias file is not valid JSON/YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise DataError(path, "alias file must map rtgen structure names to lists of ROI names, "
                              "e.g. {PTV70: [Volume1], SpinalCord: [Cord_custom]}")
    known = {s.lower(): s for s in STRUCTURES} | {"possible_dose_mask": BODY, "body": BODY, "external": BODY}
    user: dict[str, tuple[str, ...]] = {}
    for key, names in data.items():
        target = known.get(str(key).lower())
        if target is None:
            raise DataError(path, f"unknown structure {key!r}; known: {', '.join(STRUCTURES)}, possible_dose_mask")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, int, float)) for n in names):
            raise DataError(path, f"{key}: expected a list of ROI names, found {names!r}")
        user[target] = tuple(normalise_roi_name(str(n)) for n in names)
    claimed = {a for names in user.values() for a in names}  # a name the file maps leaves the defaults
    for target in (*table, *(t for t in user if t not in table)):
        table[target] = user.get(target, ()) + tuple(a for a in table.get(target, ()) if a not in claimed)
    return table


_ACTIVE: list[Mapping[str, Sequence[str]]] = []


@contextmanager
def using_aliases(aliases: Mapping[str, Sequence[str]] | str | Path | None) -> Iterator[None]:
    """Within the block, DICOM patients read without an explicit `aliases` use this table (a mapping,
    or an alias file for `load_aliases`; None: the defaults). How a command's `--aliases FILE` reaches
    every patient it reads, through evaluation and report code that knows nothing of names."""
    table = aliases if isinstance(aliases, Mapping) else load_aliases(aliases)
    _ACTIVE.append(table)
    try:
        yield
    finally:
        _ACTIVE.pop()


def aliases_in_use() -> Mapping[str, Sequence[str]]:
    """The table of the innermost `using_aliases` block, else the default one."""
    return _ACTIVE[-1] if _ACTIVE else load_aliases()


def match_roi_names(names: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None,
                    prescriptions: Mapping[str, float] | None = None) -> tuple[dict[str, str], list[str]]:
    """({rtgen name: ROI name}, unmatched ROI names).

    Organs and the body by the alias table; targets by an alias, else by `ptv_dose_gy` with the dose
    from `prescriptions` (ROI name -> Gy, from an RTPLAN) when it has the ROI, else from the name.
    When two ROIs would map to one name, an alias or an exact level beats an approximate level, then
    the first ROI wins; the others are returned as unmatched, never merged silently. What was assumed
    (a level read for another dose, a PTV without a level) is said in an RtgenWarning."""
    matched, unmatched, notes = match_rois(names, aliases, prescriptions)
    if notes:
        warnings.warn("; ".join(notes), RtgenWarning, stacklevel=2)
    return matched, unmatched


def match_rois(names: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None,
               prescriptions: Mapping[str, float] | None = None, plan: str = "the RTPLAN"
               ) -> tuple[dict[str, str], list[str], list[str]]:
    """`match_roi_names` with its notes returned rather than warned (`plan` names the prescriptions'
    source in them)."""
    aliases = load_aliases() if aliases is None else aliases
    prescriptions = prescriptions or {}
    lookup: dict[str, str] = {}
    for target, al in aliases.items():
        own = () if target in TARGETS else (target,)  # "PTV70" itself goes by the rule: a plan may say 66 Gy
        for a in (*own, *al):
            lookup.setdefault(normalise_roi_name(a), target)
    notes: list[str] = []
    candidates: list[tuple[float, int, str]] = []  # (how far from the level, order, rtgen name)
    for i, name in enumerate(names):
        target = lookup.get(normalise_roi_name(name))
        if target is not None:
            candidates.append((0.0, i, target))
            continue
        in_name = ptv_dose_gy(name)
        if in_name is False:
            candidates.append((float("inf"), i, ""))
            continue
        dose = prescriptions.get(name, in_name)
        if dose is None:
            notes.append(f"{name!r} has no dose level in its name and {plan} gives it none: not used as a "
                         f"target (name its level in an alias file, e.g. PTV70: [{name}])")
            candidates.append((float("inf"), i, ""))
            continue
        if name in prescriptions and in_name is not None and abs(in_name - dose) > 0.01 * dose:
            notes.append(f"{name!r}: {plan} prescribes {dose:g} Gy, its name says {in_name:g} Gy; the plan's used")
        level, off = nearest_level(dose)
        if level is None:
            notes.append(f"{name!r} ({dose:g} Gy) is more than {ROI_LEVEL_TOLERANCE:.0%} from 56, 63 and 70 Gy, the "
                         "levels rtgen's models know: not used as a target (map it in an alias file to use it)")
            candidates.append((float("inf"), i, ""))
            continue
        if off > 0.01:
            notes.append(f"{name!r} ({dose:g} Gy) read as {level}, the nearest level rtgen's models know: the "
                         f"dose predicted in it is near {PRESCRIPTION_GY[level]:g} Gy")
        candidates.append((off, i, level))
    matched: dict[str, tuple[int, str]] = {}
    for off, i, target in sorted(c for c in candidates if c[2]):
        if target not in matched:
            matched[target] = (i, names[i])
        elif off > 0:
            notes.append(f"{names[i]!r} would be {target} too, and {matched[target][1]!r} is nearer: not used")
    used = {i for i, _ in matched.values()}
    order = sorted(matched, key=lambda t: matched[t][0])  # in the structure set's order
    return {t: matched[t][1] for t in order}, [n for i, n in enumerate(names) if i not in used], notes
