"""Writing an analysis's output: JSON reports on disk, scalars to every logger, TensorBoard writers.

The one home of "where results go", shared by the callbacks (during training) and the
``gan-dissect`` command (post hoc):

- :func:`write_atomically`: readers never see a half-written file;
- :class:`ReportOutput`: one analysis's destinations — its report folder, the TensorBoard
  ``SummaryWriter``\\ s, and any other loggers (which get the scalars through ``log_metrics``).
  :meth:`ReportOutput.write_json` writes ``step_XXXXXXX.json`` and ``latest.json`` beside it;
  :meth:`ReportOutput.log_scalars` sends scalars to every writer and logger;
- :class:`RunWriters`: extra TensorBoard *runs* beside a writer's own (``{log_dir}/{run}``),
  so that one chart draws one coloured, legended line per layer (or concept, or category):
  TensorBoard colours lines by run, not by tag.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp()) / "dissection"
    >>> out = ReportOutput(folder=folder)
    >>> [p.name for p in out.write_json(12, {"step": 12})]
    ['step_0000012.json', 'latest.json']
    >>> json.loads((folder / "latest.json").read_text())
    {'step': 12}
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gan_dissect_callbacks.reporting._checksums import use_compiled_checksums

__all__ = [
    "ReportOutput",
    "RunWriters",
    "step_report_name",
    "write_atomically",
    "write_run_scalars",
]


def write_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers never see a half-written file (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; a report is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def step_report_name(step: int) -> str:
    """The file name of the report of ``step``: ``step_0000012.json``."""
    return f"step_{int(step):07d}.json"


@dataclass
class ReportOutput:
    """Where one analysis writes.

    Attributes:
        folder: the folder of its JSON reports (``None``: no files).
        writers: TensorBoard ``SummaryWriter``\\ s (anything with ``add_scalar`` & co.).
        loggers: other loggers; they get the scalars through ``log_metrics(metrics, step)``.
    """

    folder: Path | None = None
    writers: Sequence[Any] = field(default_factory=list)
    loggers: Sequence[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.writers:  # their event files' checksums, compiled when numba is there
            use_compiled_checksums()

    def write_json(self, step: int, payload: Mapping[str, Any]) -> list[Path]:
        """Write ``payload`` as ``step_XXXXXXX.json`` and ``latest.json``; the paths written."""
        if self.folder is None:
            return []
        text = json.dumps(payload, indent=1)
        paths = [self.folder / step_report_name(step), self.folder / "latest.json"]
        for path in paths:
            write_atomically(path, text)
        return paths

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """Every scalar to every TensorBoard writer and every other logger, at ``step``."""
        if not scalars:
            return
        for logger in self.loggers:
            logger.log_metrics(dict(scalars), step=step)
        for writer in self.writers:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, global_step=step)

    def tensorboard(self) -> Iterator[Any]:
        """Each TensorBoard writer in turn, flushed after the caller has written to it."""
        for writer in self.writers:
            yield writer
            writer.flush()


class RunWriters:
    """TensorBoard runs beside a ``SummaryWriter``'s own, created when first written to.

    ``runs.writer(parent, "dissection/generator.layer3")`` is a ``SummaryWriter`` writing to
    ``{parent's log_dir}/dissection/generator.layer3``; TensorBoard lists that folder as a run of
    its own, colours it and names it in the legend, so one tag written in several runs is one
    chart with one line per run. Writers are kept (one event file per run, not one per call)
    until :meth:`close`; a parent without ``get_logdir`` (not a ``SummaryWriter``) gets none.

    Example:
        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> parent = SummaryWriter(tempfile.mkdtemp())
        >>> runs = RunWriters()
        >>> run = runs.writer(parent, "dissection/layer3")
        >>> run is runs.writer(parent, "dissection/layer3"), len(runs)
        (True, 1)
        >>> runs.close(); len(runs)
        0
    """

    def __init__(self) -> None:
        self._writers: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._writers)

    def writer(self, parent: Any, run: str) -> Any | None:
        """The writer of run ``run`` (a relative folder) beside ``parent``; ``None`` if it has none.

        ``None`` too, with a warning naming the folder, when the run's folder cannot be made
        (e.g. a file is in the way): the parent's own run still gets every number.

        Raises:
            ValueError: if ``run`` is empty, absolute or climbs out of the parent's folder.
        """
        parts = Path(run).parts
        if not run or Path(run).is_absolute() or ".." in parts:
            raise ValueError(
                f"Expected argument `run` to be a relative folder such as 'dissection/layer3', "
                f"but got {run!r}."
            )
        get_logdir = getattr(parent, "get_logdir", None)
        if get_logdir is None:
            return None
        folder = str(Path(get_logdir()) / run)
        if folder not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            try:
                self._writers[folder] = SummaryWriter(log_dir=folder)
            except OSError as err:
                warnings.warn(
                    f"Could not open the TensorBoard run {folder!r} ({err}); its coloured "
                    "combined charts are not written, the main run still has every number.",
                    stacklevel=2,
                )
                return None
        return self._writers[folder]

    def flush(self) -> None:
        """Flush every run's writer (TensorBoard sees what was written)."""
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Close every run's writer (their files and threads); a later write opens new ones."""
        writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            writer.close()


def write_run_scalars(
    parent: Any,
    scalars_by_run: Mapping[str, Mapping[str, float]],
    step: int,
    runs: RunWriters | None = None,
) -> None:
    """Write each run's scalars beside ``parent``'s run, at ``step``.

    ``runs`` keeps the runs' writers across steps (the caller closes them); ``None`` opens them
    for this call and closes them at its end. Nothing is written beside a ``parent`` that is
    not a ``SummaryWriter``, or whose runs cannot be opened (:meth:`RunWriters.writer` warns).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> parent = SummaryWriter(tempfile.mkdtemp())
        >>> write_run_scalars(parent, {"dissection/l3": {"dissection/mean_best_iou": 0.1}}, 5)
        >>> (Path(parent.get_logdir()) / "dissection" / "l3").is_dir()
        True
    """
    run_writers = RunWriters() if runs is None else runs
    try:
        for run, scalars in scalars_by_run.items():
            run_writer = run_writers.writer(parent, run)
            if run_writer is None:
                break  # not a SummaryWriter, or its runs cannot be opened (it warned)
            for tag, value in scalars.items():
                run_writer.add_scalar(tag, value, global_step=step)
        run_writers.flush()
    finally:
        if runs is None:
            run_writers.close()
