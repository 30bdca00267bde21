"""AMOS22's own ``dataset.json`` as a CT datalist: the challenge mixes CT and MRI cases in the same folders."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

__all__ = ["AMOS_FIRST_MRI_ID", "amos_ct_cases"]

#: AMOS22 numbers its CT cases below 500 and its MRI cases from 500 on (``amos_0507.nii.gz`` is MRI).
AMOS_FIRST_MRI_ID = 500
_CASE_ID = re.compile(r"amos_(\d+)")


def amos_ct_cases(entries: Sequence[dict], ct_only: bool = True, num_labelled: int | None = None) -> list[dict]:
    """The CT entries of an AMOS22 datalist section (all entries when ``ct_only`` is False).

    Args:
        entries: datalist entries whose ``"image"`` file is named ``amos_<number>...``.
        ct_only: drop the MRI cases (number >= ``AMOS_FIRST_MRI_ID``).
        num_labelled: keep the first ``num_labelled`` of the selected entries (label-efficiency runs), None all.

    Raises:
        ValueError: an image file name carries no AMOS case number (so the modality is unknown), nothing is left,
            or ``num_labelled`` is not a positive int up to the number of selected entries.
    """
    kept = _ct_entries(entries) if ct_only else list(entries)
    if num_labelled is None:
        return kept
    if isinstance(num_labelled, bool) or not isinstance(num_labelled, int) or not 1 <= num_labelled <= len(kept):
        raise ValueError(f"num_labelled must be an int in 1..{len(kept)} (the selected training cases), "
                         f"got {num_labelled!r}.")
    return kept[:num_labelled]


def _ct_entries(entries: Sequence[dict]) -> list[dict]:
    kept = []
    for entry in entries:
        name = os.path.basename(str(entry["image"]))
        match = _CASE_ID.match(name)
        if match is None:
            raise ValueError(f"'{entry['image']}' is not named amos_<number>.nii.gz, so ct_only cannot tell CT from "
                             "MRI; rename the files as AMOS22 does or set ct_only to false.")
        if int(match.group(1)) < AMOS_FIRST_MRI_ID:
            kept.append(entry)
    if not kept:
        raise ValueError(f"no CT case (amos_<number> below {AMOS_FIRST_MRI_ID}) among {len(entries)} entries.")
    return kept
