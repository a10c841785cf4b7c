"""Files written whole or not at all."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, data: str | bytes | Callable[[Path], None], *,
                 per_process: bool = False) -> None:
    """Write ``path`` through a temporary file beside it, renamed over it once complete.

    ``data`` is the text or bytes to write, or a function that writes the temporary path it is
    given (``torch.save``). A crash mid-write leaves the previous file intact, and an
    interrupted or failed write removes its temporary file. The temporary file is
    ``NAME.tmp``; ``per_process`` gives each process its own (``NAME.PID.tmp``), where
    processes may write the same file at once.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp" if per_process else f"{path.name}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C, SIGTERM or a full disk mid-write: no half file stays behind
        tmp.unlink(missing_ok=True)
        raise
