"""Write a results file under a temporary name and give it its real name only when it is done.

``specsample bench`` saves the document after every group of cells (so a crash loses little); those
saves go to a hidden sibling ``.NAME.XXXX.partial``. :meth:`PartialFile.commit` renames it to the
real name (one atomic ``os.replace``); leaving the block without committing removes it. A file
under the real name is therefore always a finished (or cleanly interrupted, and marked so) run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType


class PartialFile:
    """Context manager: ``path`` to write to while working, ``commit()`` to publish as ``final``.

    Args:
        final: the results file's real path.
        force: replace ``final`` if it exists at commit time; without it, a file that appeared
            there during the run is kept and the work stays under :attr:`path` (the error says
            where).
    """

    def __init__(self, final: str | os.PathLike, force: bool = False) -> None:
        self.final = Path(final)
        self.force = force
        self.path: Path | None = None
        self.committed = False

    def __enter__(self) -> PartialFile:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f".{self.final.name}.", suffix=".partial", dir=self.final.parent
        )
        os.close(fd)
        self.path = Path(name)
        return self

    def commit(self) -> Path:
        """Publish the finished file under its real name."""
        from specsample.cli_options import UsageError

        assert self.path is not None, "commit() outside the with block"
        if self.final.exists() and not self.force:
            self.committed = True  # keep the work where it is
            raise UsageError(
                f"{self.final} appeared while the run was going; the results are in {self.path} "
                f"(rename it, or rerun with --force)"
            )
        os.replace(self.path, self.final)
        self.committed = True
        return self.final

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed and self.path is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
