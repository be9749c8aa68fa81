"""Telling a full disk from other write errors."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


def disk_full(error: BaseException, folder: Path) -> bool:
    """ENOSPC or EDQUOT anywhere in the chain (torch.save wraps the OSError in a RuntimeError),
    or a disk with no room left."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False
