"""The HF Trainer's console: its progress bar, with each dev evaluation as one log line instead of the raw dict of
every logged row (losses, the evaluation's 17 metrics, the run's totals) that it writes under the bar. Those rows stay
in trainer.state.log_history (finetune/train_log.json, training.png, W&B)."""

from __future__ import annotations

import logging

from transformers.trainer_callback import ProgressCallback

log = logging.getLogger(__name__)


class LoggedProgress(ProgressCallback):
    def __init__(self) -> None:
        super().__init__()
        self.loss: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.loss = logs.get("loss", self.loss)
        metric = args.metric_for_best_model
        if metric and metric in logs:
            loss = f" (train loss {self.loss:.4f})" if self.loss is not None else ""
            log.info("step %d/%d: %s %.4f%s", state.global_step, state.max_steps, metric.removeprefix("eval_"),
                     logs[metric], loss)


def use_logged_progress(trainer) -> None:
    """Replaces the Trainer's default bar (absent with disable_tqdm or in a notebook) by LoggedProgress."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(LoggedProgress())
