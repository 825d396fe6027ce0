"""DICOM RT in and out (pydicom 3): a CT series, an RTSTRUCT and an RTDOSE as an rtgen `Patient`, and back.

Clinics export a folder of DICOM files (often in nested subfolders, often without a .dcm suffix);
the treatment planning system expects an RTDOSE back on the same frame of reference. This package
reads such a folder into a `Patient` and writes a `Patient` (or a predicted dose) as DICOM RT.

Array convention. OpenKBP (the data the shipped models learned from) stores array[i, j, k] with
i = image row (patient posterior is larger i), j = image column (patient left is larger j) and
k = axial slice from head to feet (measured on pt_204: Brainstem at k ~ 38, Larynx at k ~ 83).
DICOM patient coordinates (LPS) have +x to the patient's left, +y posterior and +z toward the
head, so rtgen's arrays are array[i, j, k] = voxel at (x0 + j dx, y0 + i dy, z0 - k dz): axis 0
runs along +y, axis 1 along +x and axis 2 along *decreasing* z. Keeping OpenKBP's order (rather
than increasing z) means a DICOM patient looks to the 2D models exactly like the axial slices they
were trained on, and OpenKBP -> DICOM -> rtgen is the identity. `spacing` is (dy, dx, dz) in mm.
Axis-aligned series with other in-plane orientations (flipped or transposed rows and columns) are
brought to this convention on reading; oblique or non-axial series are refused.

Every malformed file raises ONE `DataError` naming that file and the problem (see `tags`).

A package of short modules, one job each: `names` (ROI alias table and matching), `tags` (reading a
file's tags safely), `geometry` (CtReference, in-plane orientation), `folder` (finding and sorting the
files), `cohort` (the patients of an export), `ct`, `rtstruct`, `rtdose`, `rtplan` (reading each kind),
`raster` (contours <-> masks), `identity` (patient identity values, anonymisation), `read` (a folder ->
a Patient) and `write` (a Patient or a dose -> DICOM RT). The public names are re-exported
here, so callers import them from `rtgen.data.sources.dicom`.
"""

from rtgen.data.sources.dicom.ct import body_from_ct
from rtgen.data.sources.dicom.folder import is_dicom_dir, is_dicom_patient_dir
from rtgen.data.sources.dicom.geometry import CtReference
from rtgen.data.sources.dicom.identity import anonymized, valid_identity
from rtgen.data.sources.dicom.names import (
    BODY,
    DEFAULT_ALIASES,
    aliases_in_use,
    load_aliases,
    match_roi_names,
    nearest_level,
    normalise_roi_name,
    ptv_dose_gy,
    using_aliases,
)
from rtgen.data.sources.dicom.raster import mask_contours, rasterise_contours
from rtgen.data.sources.dicom.read import (
    DicomCase,
    DoseChoice,
    check_dose_files,
    choose_doses,
    chosen_doses,
    prescription,
    read_ct_reference,
    read_dicom_case,
    read_dicom_patient,
)
from rtgen.data.sources.dicom.rtdose import (
    DoseGrid,
    dose_on_ct_grid,
    read_rtdose,
    read_rtdose_on_grid,
)
from rtgen.data.sources.dicom.rtstruct import read_rtstruct_rois
from rtgen.data.sources.dicom.tags import (
    CT_IMAGE_STORAGE,
    MEDIA_STORAGE_DIRECTORY,
    RT_DOSE_STORAGE,
    RT_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
    STUDY_COMPONENT_MANAGEMENT,
    reading,
)
from rtgen.data.sources.dicom.write import (
    IMPORTED,
    PREDICTED,
    write_ct_series,
    write_dicom_patient,
    write_rtdose,
    write_rtstruct,
)

__all__ = [
    "BODY", "CT_IMAGE_STORAGE", "DEFAULT_ALIASES", "MEDIA_STORAGE_DIRECTORY", "RT_DOSE_STORAGE",
    "RT_PLAN_STORAGE", "RT_STRUCTURE_SET_STORAGE", "STUDY_COMPONENT_MANAGEMENT", "CtReference", "DoseGrid", "body_from_ct",
    "dose_on_ct_grid", "is_dicom_dir", "is_dicom_patient_dir", "load_aliases", "mask_contours", "match_roi_names",
    "normalise_roi_name", "rasterise_contours", "read_ct_reference", "read_dicom_patient", "read_rtdose",
    "DicomCase", "DoseChoice", "check_dose_files", "choose_doses", "chosen_doses", "prescription", "read_dicom_case",
    "IMPORTED", "PREDICTED", "anonymized", "valid_identity",
    "read_rtdose_on_grid", "read_rtstruct_rois", "reading", "write_ct_series", "write_dicom_patient",
    "write_rtdose", "write_rtstruct", "aliases_in_use", "nearest_level", "ptv_dose_gy", "using_aliases",
]
