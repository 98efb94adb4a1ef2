"""What ``--resume`` may change: a run continues only with the configuration and the data it started with.

``last.pt`` stores the configuration (``config``) and the samples of each part of the split with their labels
(``data``, see :func:`data_identity`). Resuming with anything else that decides what is trained (model,
dataset, classes, clip size, split, optimisation, seed, ...) would silently mix two runs, so
:func:`check_resumable` refuses and lists every difference. Settings that only decide where and how fast the
same run executes may change (:data:`MAY_CHANGE`); so may the data's location, as long as the samples and
labels are the same.
"""
from __future__ import annotations

from typing import Any

__all__ = ["MAY_CHANGE", "ResumeMismatch", "data_identity", "config_differences", "data_differences",
           "check_resumable"]

#: Configuration keys that may differ between a run and its resumption.
MAY_CHANGE = frozenset({"out", "resume", "stop_after_epochs", "progress", "workers", "device", "cache_dir",
                        "compile", "channels_last", "backend", "data_root", "annotation",
                        "impl"})  # "impl": the attention-backend key of checkpoints before "backend"
#: Sample ids listed per kind of difference before the rest is counted.
_SHOWN = 5


class ResumeMismatch(ValueError):
    """``--resume`` with a configuration or data other than the checkpoint's; the message lists the differences."""


def data_identity(classes, parts: dict[str, Any]) -> dict[str, Any]:
    """``{"classes": [...], "<part>": {uid: label}}`` of the datasets of a split (``parts``: name -> dataset)."""
    return {"classes": list(classes), **{name: {s.uid: s.label for s in ds.samples} for name, ds in parts.items()}}


def _normalise(value):
    return list(value) if isinstance(value, tuple) else value


def config_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per configuration key outside :data:`MAY_CHANGE` whose value differs."""
    lines = []
    for key in sorted(set(saved) | set(now)):
        if key in MAY_CHANGE:
            continue
        old, new = _normalise(saved.get(key, "<absent>")), _normalise(now.get(key, "<absent>"))
        if old != new:
            lines.append(f"{key}: {old!r} in the checkpoint, {new!r} now")
    return lines


def _listed(uids) -> str:
    uids = sorted(uids)
    more = f" and {len(uids) - _SHOWN} more" if len(uids) > _SHOWN else ""
    return ", ".join(uids[:_SHOWN]) + more


def data_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per difference in the classes or in the samples and labels of each part of the split."""
    lines = []
    if list(saved.get("classes", [])) != list(now.get("classes", [])):
        lines.append(f"classes: {saved.get('classes')} in the checkpoint, {now.get('classes')} now")
    for part in sorted((set(saved) | set(now)) - {"classes"}):
        old, new = saved.get(part, {}), now.get(part, {})
        gone, added = set(old) - set(new), set(new) - set(old)
        relabelled = {u for u in set(old) & set(new) if old[u] != new[u]}
        if gone:
            lines.append(f"{part} samples: {len(gone)} of the checkpoint's are not in the data now ({_listed(gone)})")
        if added:
            lines.append(f"{part} samples: {len(added)} not in the checkpoint's ({_listed(added)})")
        if relabelled:
            lines.append(f"{part} samples: {len(relabelled)} with another label now ("
                         + _listed(f"{u}: {old[u]} -> {new[u]}" for u in relabelled) + ")")
    return lines


def check_resumable(state: dict[str, Any], config: dict[str, Any], data: dict[str, Any], path: str) -> None:
    """Raise :class:`ResumeMismatch` listing how ``config`` / ``data`` differ from the checkpoint ``state``.

    Checkpoints without the stored configuration or data skip that comparison.
    """
    lines = []
    if "config" in state:
        lines += config_differences(state["config"], config)
    if "data" in state:
        lines += data_differences(state["data"], data)
    if lines:
        raise ResumeMismatch(
            f"cannot resume from {path}: the run was started with another configuration or data:\n  "
            + "\n  ".join(lines)
            + "\nResume with the checkpoint's settings (its config.json), or start a new run with another --out. "
              f"Only these may change on --resume: {', '.join(sorted(MAY_CHANGE))}.")
