"""Registered CT/MR pairs -> a copy small enough for a GPU call's 64 MiB: python pack_pairs.py SRC DST

CT and MR as int16 (the MR's values are integers already; the CT, resampled by the registration,
is rounded to 1 HU), masks as uint8, gzip level 9; other files (transforms, PNGs) are left out.
24 training pairs: 111 MB -> 53 MB."""
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

nib.openers.Opener.default_compresslevel = 9
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for patient in sorted(p for p in src.iterdir() if p.is_dir()):
    (dst / patient.name).mkdir(parents=True, exist_ok=True)
    for f in sorted(patient.glob("*.nii.gz")):
        image = nib.load(str(f))
        a = image.get_fdata(dtype=np.float32)
        a = a.astype(np.uint8) if "mask" in f.name else np.round(a).astype(np.int16)
        header = image.header.copy()
        header.set_data_dtype(a.dtype)
        header["scl_slope"], header["scl_inter"] = 1, 0
        nib.save(nib.Nifti1Image(a, image.affine, header), str(dst / patient.name / f.name))
    print(patient.name)
