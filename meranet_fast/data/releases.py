"""Loaders for the official micro-expression releases, from their own folder layouts and spreadsheets.

Each loader returns a :class:`~meranet_fast.data.samples.SampleIndex` holding every annotated sample
(all emotion classes; :mod:`meranet_fast.data.registry` applies the paper's class subsets). Annotation
gaps (a missing apex such as ``'/'``, a missing offset) are worked around and listed in
``SampleIndex.issues``; a missing sample folder, a missing frame or an unreadable spreadsheet raises an
error naming the file.

Frame numbers in the spreadsheets are the numbers in the frame file names (``img46.jpg`` → 46); a sample
is the run of frames onset..offset, which must all exist.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any

from meranet_fast.data.annotations import find_spreadsheet, read_sheet_rows, read_table
from meranet_fast.data.samples import (
    AnnotationError,
    FrameError,
    Sample,
    SampleIndex,
    frames_in_range,
    index_frames,
    normalize_label,
    resolve_apex,
)

__all__ = [
    "load_casme2",
    "load_samm",
    "load_casme1",
    "load_casme_sq",
    "load_smic",
    "load_megc2019",
    "MEGC2019_CLASSES",
    "MEGC2019_MAP",
]

#: Deepest folder level below a dataset root searched for the subject folders.
_MAX_DEPTH = 3


def _find_folder(root: str, *parts: str) -> str:
    """``root/[up to _MAX_DEPTH folders]/parts...``: the first existing match (parts may be glob patterns).

    Raises:
        FrameError: naming the path expected directly under ``root``.
    """
    for depth in range(_MAX_DEPTH + 1):
        hits = sorted(p for p in glob.glob(os.path.join(root, *(["*"] * depth), *parts)) if os.path.isdir(p))
        if hits:
            return hits[0]
    raise FrameError(f"frame folder not found: {os.path.join(root, *parts)} "
                     f"(also searched up to {_MAX_DEPTH} folder levels below {root})")


def _cell_text(value: Any) -> str:
    """A spreadsheet cell as trimmed text; whole-number floats lose their ``.0``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _subject_id(value: Any, width: int) -> str:
    """Subject cell → zero-padded digits (``1`` or ``'01'`` or ``'sub01'`` → ``'01'`` for width 2)."""
    text = _cell_text(value)
    digits = "".join(ch for ch in text if ch.isdigit())
    if not digits:
        raise AnnotationError(f"subject {value!r} has no digits")
    return digits.zfill(width)


def _coded_samples(dataset: str, sheet: str, rows: list[dict[str, Any]],
                   folder_of) -> SampleIndex:
    """Samples from spreadsheet rows with ``subject, filename, onset, apex, offset, emotion`` fields.

    ``folder_of(row) -> (subject id, frame folder)``.
    """
    samples, issues = [], []
    for row in rows:
        if row["subject"] is None or row["filename"] is None:
            issues.append(f"{sheet}: row {row} lacks subject or filename, skipped")
            continue
        subject, folder = folder_of(row)
        name = str(row["filename"]).strip()
        uid = f"{dataset}/{subject}/{name}"
        frames, apex = resolve_apex(uid, folder, row["onset"], row["apex"], row["offset"], issues)
        samples.append(Sample(dataset, subject, name, normalize_label(row["emotion"]), tuple(frames), apex))
    return SampleIndex(dataset, samples, issues)


_CODING_COLUMNS = {
    "subject": ("Subject",),
    "filename": ("Filename",),
    "onset": ("OnsetFrame", "Onset Frame", "OnsetF", "Onset"),
    "apex": ("ApexFrame", "Apex Frame", "ApexF1", "ApexF", "Apex"),
    "offset": ("OffsetFrame", "Offset Frame", "OffsetF", "Offset"),
    "emotion": ("Estimated Emotion", "Emotion"),
}


def load_casme2(root: str, annotation: str | None = None) -> SampleIndex:
    """CASME II (Yan et al. 2014).

    Layout: ``CASME2-coding-*.xlsx`` (columns Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame,
    Estimated Emotion) in ``root`` or a folder inside it; frames ``sub<XX>/<Filename>/img<N>.jpg`` (raw
    release) or ``reg_img<N>.jpg`` (cropped release), the ``subXX`` folders up to three levels below
    ``root`` (e.g. ``CASME2_RAW_selected/sub01``). Apex cells such as ``'/'`` fall back to the middle of
    onset..offset.
    """
    sheet = find_spreadsheet(root, "CASME2-coding-*.xlsx", annotation)

    def folder_of(row):
        subject = "sub" + _subject_id(row["subject"], 2)
        return subject, _find_folder(root, subject, str(row["filename"]).strip())

    return _coded_samples("casme2", sheet, read_table(sheet, _CODING_COLUMNS), folder_of)


def load_samm(root: str, annotation: str | None = None) -> SampleIndex:
    """SAMM (Davison et al. 2018).

    Layout: ``SAMM_Micro_FACS_Codes*.xlsx`` whose header (Subject, Filename, Onset Frame, Apex Frame,
    Offset Frame, Estimated Emotion, ...) is on row 14 below a block of notes (the header row is found by
    its names); frames ``<sss>/<Filename>/<sss>_<NNNNN>.jpg`` with the 3-digit subject ``sss``.
    """
    sheet = find_spreadsheet(root, "SAMM_Micro_FACS_Codes*.xlsx", annotation)

    def folder_of(row):
        subject = _subject_id(row["subject"], 3)
        return subject, _find_folder(root, subject, str(row["filename"]).strip())

    return _coded_samples("samm", sheet, read_table(sheet, _CODING_COLUMNS), folder_of)


def load_casme1(root: str, annotation: str | None = None) -> SampleIndex:
    """CASME I (Yan et al. 2013), sections A and B.

    Assumed layout (the release's exact spreadsheet name is not documented publicly; this follows how
    public code reads it): one or more ``CASME*.xlsx`` coding sheets in ``root`` (or a folder inside it)
    with columns Subject, Filename, OnsetF, ApexF1, OffsetF, Emotion (``Onset Frame``-style names are
    accepted too); frames ``CASME_A/Section A/sub<XX>/<Filename>/<Filename>-<N>.jpg`` and likewise
    ``CASME_B/Section B/...`` (any file name ending in the frame number works, e.g. ``reg_img<N>.jpg`` of
    cropped copies). Sheets from the original ``.xls`` must be converted to ``.xlsx`` first.
    """
    sheets = [annotation] if annotation else sorted(
        set(glob.glob(os.path.join(root, "CASME*.xlsx")) + glob.glob(os.path.join(root, "*", "CASME*.xlsx"))))
    if not sheets:
        raise AnnotationError(f"no CASME I coding spreadsheet matching 'CASME*.xlsx' in {root} "
                              "(or its sub-folders); pass its path explicitly")

    def folder_of(row):
        subject = "sub" + _subject_id(row["subject"], 2)
        return subject, _find_folder(root, subject, str(row["filename"]).strip())

    merged = SampleIndex("casme1", [])
    for sheet in sheets:
        part = _coded_samples("casme1", sheet, read_table(sheet, _CODING_COLUMNS), folder_of)
        merged.samples += part.samples
        merged.issues += part.issues
    return merged


def _casme_sq_lookup(rows: list[tuple[Any, ...]], sheet: str, what: str, key: int, value: int) -> dict:
    table = {}
    for row in rows:
        if len(row) > max(key, value) and row[key] is not None and row[value] is not None:
            table[_cell_text(row[key])] = row[value]
    if not table:
        raise AnnotationError(f"{sheet}: the {what} sheet is empty")
    return table


def load_casme_sq(root: str, annotation: str | None = None, label_source: str = "video") -> SampleIndex:
    """CAS(ME)² (Qu et al. 2017), micro-expressions only.

    Assumed layout (from how public code reads the release): ``CAS(ME)^2code_final*.xlsx`` with three
    header-less sheets. Sheet 1, one expression per row: participant number, ``<video name>_<k>`` (e.g.
    ``anger1_1``), onset, apex, offset (0 when not coded), AUs, estimated emotion, expression type
    (``micro-expression`` / ``macro-expression``), self-reported emotion. Sheet 2 maps the participant
    number (column 3) to the subject number (column 1); sheet 3 maps the video name (column 2) to its
    4-digit code (column 1). Frames: ``rawpic/s<NN>/<NN>_<code>*/img<N>.jpg`` numbered in the long video.

    Args:
        label_source: ``"video"`` (default): the emotion of the eliciting video (``anger``, ``disgust``,
            ``happy``), which gives the paper's §4.1 counts (57 micro-expressions: happy 18, anger 22,
            disgust 17); ``"estimated"``: the estimated-emotion column.
    """
    if label_source not in ("video", "estimated"):
        raise ValueError(f"label_source must be 'video' or 'estimated', got {label_source!r}")
    sheet = find_spreadsheet(root, "CAS(ME)*code_final*.xlsx", annotation)
    subjects = _casme_sq_lookup(read_sheet_rows(sheet, 1), sheet, "participant → subject", key=2, value=0)
    codes = _casme_sq_lookup(read_sheet_rows(sheet, 2), sheet, "video name → code", key=1, value=0)
    samples, issues = [], []
    for row in read_sheet_rows(sheet, 0):
        if len(row) < 8 or row[1] is None or str(row[7]).strip().lower() != "micro-expression":
            continue  # header lines, blank rows and macro-expressions
        expression = str(row[1]).strip()
        video = expression.rsplit("_", 1)[0]
        participant = _cell_text(row[0])
        if participant not in subjects or video not in codes:
            raise AnnotationError(f"{sheet}: row {expression!r}: participant {participant!r} or video "
                                  f"{video!r} is not in the mapping sheets")
        subject = _subject_id(subjects[participant], 2)
        code = _subject_id(codes[video], 4)
        folder = _find_folder(root, f"s{subject}", f"{subject}_{code}*")
        uid = f"casme_sq/s{subject}/{expression}"
        frames, apex = resolve_apex(uid, folder, row[2], row[3], row[4], issues)
        label = video.rstrip("0123456789") if label_source == "video" else row[6]
        samples.append(Sample("casme_sq", f"s{subject}", expression, normalize_label(label),
                              tuple(frames), apex))
    return SampleIndex("casme_sq", samples, issues)


def load_smic(root: str, annotation: str | None = None) -> SampleIndex:
    """SMIC-HS (Li et al. 2013).

    Assumed layout (from public code; SMIC ships no per-sample spreadsheet): ``HS/s<k>/micro/<emotion>/
    <sample>/`` with emotion ``negative``, ``positive`` or ``surprise`` and the frames of the clip
    (``image<N>.bmp``, ``reg_image<N>.bmp``, ...) inside, up to three folder levels below ``root``. SMIC
    has no apex annotation: the middle frame is used (recorded once in the issues). ``annotation`` is
    accepted for a uniform signature and must be ``None``.
    """
    if annotation is not None:
        raise AnnotationError("SMIC has no annotation spreadsheet; its labels come from the folder names")
    folders = []
    for depth in range(_MAX_DEPTH + 1):
        folders = sorted(glob.glob(os.path.join(root, *(["*"] * depth), "s*", "micro", "*", "*")))
        if folders:
            break
    if not folders:
        raise FrameError(f"no SMIC clip folders (<subject>/micro/<emotion>/<sample>) found under {root}")
    samples = []
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        emotion_dir = os.path.dirname(folder)
        subject = os.path.basename(os.path.dirname(os.path.dirname(emotion_dir)))
        numbered = index_frames(folder)
        uid = f"smic/{subject}/{os.path.basename(folder)}"
        frames = tuple(frames_in_range(numbered, min(numbered), max(numbered), uid))
        samples.append(Sample("smic", subject, os.path.basename(folder),
                              normalize_label(os.path.basename(emotion_dir)), frames, (len(frames) - 1) // 2))
    return SampleIndex("smic", samples, ["smic: no apex annotation, the middle frame of every clip is used"])


#: The MEGC2019 composite classes.
MEGC2019_CLASSES = ("negative", "positive", "surprise")
#: Emotion → composite class, per source dataset (samples of other emotions are left out).
MEGC2019_MAP: dict[str, dict[str, str]] = {
    "casme2": {"disgust": "negative", "repression": "negative", "happiness": "positive", "surprise": "surprise"},
    "samm": {"anger": "negative", "contempt": "negative", "disgust": "negative", "fear": "negative",
             "sadness": "negative", "happiness": "positive", "surprise": "surprise"},
    "smic": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
}


def load_megc2019(roots: dict[str, str], annotations: dict[str, str] | None = None) -> SampleIndex:
    """MEGC2019 3-class composite (negative / positive / surprise) of the releases given.

    Args:
        roots: ``{"casme2": dir, "samm": dir, "smic": dir}``; any subset of these (SMIC-HS is optional).
        annotations: optional explicit spreadsheet paths per release.

    Subjects become ``<release>:<subject>`` so leave-one-subject-out stays per person across releases.
    """
    unknown = set(roots) - set(MEGC2019_MAP)
    if unknown or not roots:
        raise ValueError(f"megc2019 takes roots for {sorted(MEGC2019_MAP)}, got {sorted(roots)}")
    loaders = {"casme2": load_casme2, "samm": load_samm, "smic": load_smic}
    merged = SampleIndex("megc2019", [])
    for name, root in roots.items():
        part = loaders[name](root, (annotations or {}).get(name))
        merged.issues += part.issues
        mapping = MEGC2019_MAP[name]
        merged.samples += [dataclasses.replace(s, subject=f"{name}:{s.subject}", label=mapping[s.label])
                           for s in part.samples if s.label in mapping]
    return merged
