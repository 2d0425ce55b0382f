"""What a failed file operation means and how to go on: the one wording for every layer.

The output writer (:mod:`losa_cache.outdir`), the store (``store.storage_errors``), HDF5
export and the CLI's top-level mapper all name a full, read-only or forbidden disk the same
way: what happened (with the errno's name, for searching), then the fix.
"""

from __future__ import annotations

import errno

__all__ = ["os_failure"]

_WHAT = {
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ELOOP: "a symlink on the way",
}


def os_failure(
    code: int | None, target: str, retry: str = "rerun the same command", kept: bool = True
) -> str | None:
    """``code`` (an errno) as ``what (ENAME): fix``; ``target`` names what to choose
    instead (``--out``, ``store path`` ...), ``retry`` how to go on once space is free,
    ``kept`` whether finished work survives (it does unless the caller removed it).
    None for an errno this does not explain (the caller keeps the error's own text)."""
    what = _WHAT.get(code) if code is not None else None
    if what is None:
        return None
    name = errno.errorcode[code]
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space (or choose another {target}), then {retry}"
        fix += "; finished work is kept" if kept else ""
    elif code == errno.EROFS:
        fix = f"choose another {target} on a writable disk"
    elif code == errno.ELOOP:
        fix = f"losa-cache never writes through a symlink: remove it, or choose a new {target}"
    else:
        fix = f"fix the folder's permissions, or choose another {target} you may write to"
    return f"{what} ({name}): {fix}"
