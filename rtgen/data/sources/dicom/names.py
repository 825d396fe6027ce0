"""ROI names: the alias table that maps a clinic's ROI names ("PTV_70", "Parotid R", "External") to
rtgen's structure names, and the matching rule. Kept apart from the DICOM parsing because users
extend the table (an alias file) and other tools may want to match names without reading DICOM."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from rtgen.core.errors import DataError
from rtgen.core.structures import STRUCTURES

BODY = "possible_dose_mask"
"""The alias-table key of the body/external ROI, which becomes the possible dose mask."""

DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {
    "PTV56": ("ptv56", "ptv5600", "ptv56.0"),
    "PTV63": ("ptv63", "ptv6300", "ptv63.0"),
    "PTV70": ("ptv70", "ptv7000", "ptv70.0"),
    "Brainstem": ("brainstem", "brainstm", "bstem", "tronccerebral"),
    "SpinalCord": ("spinalcord", "cord", "spinalcanal", "myelon", "medulla", "spinal"),
    "RightParotid": ("rightparotid", "parotidright", "parotidr", "rparotid", "parotidrt", "rtparotid",
                     "parotidd", "parotiddx", "glndparotidr"),
    "LeftParotid": ("leftparotid", "parotidleft", "parotidl", "lparotid", "parotidlt", "ltparotid",
                    "parotidg", "parotidsx", "glndparotidl"),
    "Esophagus": ("esophagus", "oesophagus", "esophag", "oesophag"),
    "Larynx": ("larynx", "glotticlarynx", "larynxglottic"),
    "Mandible": ("mandible", "bonemandible", "mandibula", "jaw"),
    BODY: ("body", "external", "externalcontour", "skin", "outline", "bodycontour", "bodyoutline",
           "possibledosemask"),
}
"""rtgen name -> ROI names (compared after `normalise_roi_name`). Users extend it with an alias file."""


def normalise_roi_name(name: str) -> str:
    """Lowercase, drop a dose unit after a number ("70 Gy" -> "70") and every space, _, - and other
    separator, so that "PTV_70", "PTV70" and "ptv 70 Gy" all read "ptv70"."""
    s = str(name).strip().lower()
    s = re.sub(r"(?<=\d)[\s_\-]*c?gy\b", "", s)
    s = re.sub(r"[^0-9a-z.]", "", s)
    return s.rstrip(".")


def load_aliases(path: str | Path | None = None) -> dict[str, tuple[str, ...]]:
    """The default alias table, extended by a JSON or YAML file {rtgen name: [ROI names]} if given.

    Keys are rtgen structure names (PTV56 .. Mandible) or "possible_dose_mask" (also accepted: "body",
    "external") for the body ROI. A file's aliases are tried before the defaults, so a clinic can
    also redirect a name the default table already knows.
    """
    table = {k: tuple(v) for k, v in DEFAULT_ALIASES.items()}
    if path is None:
        return table
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(path, f"alias file cannot be read ({e})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - json and yaml raise their own error types
        raise DataError(path, f"alias file is not valid JSON/YAML ({e})") from None
    if not isinstance(data, dict):
        raise DataError(path, "alias file must map rtgen structure names to lists of ROI names")
    known = {s.lower(): s for s in STRUCTURES} | {"possible_dose_mask": BODY, "body": BODY, "external": BODY}
    user: dict[str, tuple[str, ...]] = {}
    for key, names in data.items():
        target = known.get(str(key).lower())
        if target is None:
            raise DataError(path, f"unknown structure {key!r}; known: {', '.join(STRUCTURES)}, possible_dose_mask")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not all(isinstance(n, (str, int, float)) for n in names):
            raise DataError(path, f"{key}: expected a list of ROI names, found {names!r}")
        user[target] = tuple(normalise_roi_name(str(n)) for n in names)
    claimed = {a for names in user.values() for a in names}  # a name the file maps leaves the defaults
    for target, defaults in table.items():
        table[target] = user.get(target, ()) + tuple(a for a in defaults if a not in claimed)
    return table


def match_roi_names(names: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None
                    ) -> tuple[dict[str, str], list[str]]:
    """({rtgen name: ROI name}, unmatched ROI names). The first ROI matching a name wins; later ones
    that would map to the same name are returned as unmatched, never merged silently."""
    aliases = DEFAULT_ALIASES if aliases is None else aliases
    lookup: dict[str, str] = {}
    for target, al in aliases.items():
        for a in (normalise_roi_name(target), *(normalise_roi_name(x) for x in al)):
            lookup.setdefault(a, target)
    matched: dict[str, str] = {}
    unmatched: list[str] = []
    for name in names:
        target = lookup.get(normalise_roi_name(name))
        if target is None or target in matched:
            unmatched.append(name)
        else:
            matched[target] = name
    return matched, unmatched
