"""Lightning-specific plumbing of the callbacks: the step axis, report folders, TensorBoard writers.

Example:
    >>> import lightning.pytorch as pl
    >>> trainer = pl.Trainer(logger=False, default_root_dir="/tmp/run", enable_progress_bar=False)
    >>> analysis_dir(trainer, "dissection").as_posix()
    '/tmp/run/dissection'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gan_dissect_callbacks.reporting.writing import ReportOutput

__all__ = ["analysis_dir", "batch_step", "report_output", "tensorboard_writers"]


def tensorboard_writers(trainer: Any) -> list[Any]:
    """Every TensorBoard ``SummaryWriter`` among a trainer's loggers (possibly none).

    Lightning's ``fast_dev_run`` replaces loggers by a dummy one, which is skipped.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def batch_step(trainer: Any) -> int:
    """The index of the current training batch, the axis ``self.log`` uses.

    Analyses of the model's state after batch ``b`` are logged at ``batch_step + 1``, the number
    of batches trained (so 0 is the untrained model). ``trainer.global_step`` is not used because
    a GAN stepping two optimizers by hand advances it twice per batch.
    """
    return int(trainer.fit_loop.total_batch_idx)


def analysis_dir(trainer: Any, name: str) -> Path:
    """Where an analysis writes its files: ``{first logger's log_dir}/{name}``.

    Like ``trainer.log_dir`` but without its broadcast, so rank 0 may call it alone under DDP.
    Without a logger (or with ``fast_dev_run``'s dummy one) it is ``default_root_dir/{name}``.
    """
    base = None
    if trainer.loggers:
        logger = trainer.loggers[0]
        base = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    return Path(base or trainer.default_root_dir) / name


def report_output(trainer: Any, name: str) -> ReportOutput:
    """Where an analysis called ``name`` writes: its folder, the TensorBoard writers, other loggers.

    Lightning's ``fast_dev_run`` dummy logger is neither a TensorBoard writer nor given scalars.
    """
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.loggers.logger import DummyLogger

    others = [lg for lg in trainer.loggers if not isinstance(lg, TensorBoardLogger | DummyLogger)]
    return ReportOutput(
        folder=analysis_dir(trainer, name), writers=tensorboard_writers(trainer), loggers=others
    )
