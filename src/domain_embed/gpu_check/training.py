"""The training rows: the package's `train_model` (MNRL, one hard negative) in bf16 and fp32, alternated, timed
after a warm-up and before the final save, split into the host's time between steps and the GPU's inside them."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from domain_embed.gpu_check.alternate import Side, alternate
from domain_embed.gpu_check.context import DTYPES, SEED, Sizes, minilm, peak_memory, reset_peak, sync
from domain_embed.gpu_check.data import obliqa_triplets
from domain_embed.gpu_check.encode import export_trace
from domain_embed.gpu_check.flops import flops_per_token, mfu, peak_dtype
from domain_embed.gpu_check.report import Row, judge, median_index


class StepTimer(TrainerCallback):
    """Times the optimizer steps after `warmup` of them up to the last (the final save comes after it): the wall
    clock between those two boundaries, each synchronised; per step, the GPU's span between CUDA events at its
    begin and end, and the host's time before it (fetching and collating the batch, where sentence-transformers
    tokenizes, and logging). Counts the tokens the model reads in the timed steps, without and with padding."""

    def __init__(self, model, warmup: int, cuda: bool):
        if warmup < 1:
            raise ValueError("StepTimer needs a warm-up step: the timing starts at its end")
        self.warmup, self.cuda, self.flops_per_token = warmup, cuda, flops_per_token(model)
        self.steps, self.wall, self.host_s, self.gpu_s, self.padded_tokens = 0, 0.0, 0.0, None, 0
        self.ended = None  # perf_counter() at the end of the timed steps
        self.timing, self._tokens, self._events, self._t0, self._last = False, 0, [], 0.0, 0.0
        model[0].register_forward_pre_hook(self._count)  # the transformer module: its input is the features dict

    @property
    def tokens(self) -> int:
        return int(self._tokens)

    def _count(self, module, args) -> None:
        if self.timing:
            mask = args[0]["attention_mask"]
            self._tokens = self._tokens + mask.sum()  # stays on the device: no sync per forward
            self.padded_tokens += mask.numel()

    def _event(self):
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.timing:
            self.host_s += time.perf_counter() - self._last
            if self.cuda:
                self._events.append((self._event(),))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self._sync()
            self.timing, self._t0 = True, time.perf_counter()
        elif self.timing:
            self.steps += 1
            if self.cuda:
                self._events[-1] += (self._event(),)
            if state.global_step == state.max_steps:
                self._sync()
                self.timing, self.ended = False, time.perf_counter()
                self.wall = self.ended - self._t0
                self.gpu_s = sum(b.elapsed_time(e) for b, e in self._events) / 1e3 if self.cuda else None
        self._last = time.perf_counter()


class ProfileSteps(TrainerCallback):
    """A torch.profiler trace of the `steps` optimizer steps after `warmup` of them."""

    def __init__(self, path: Path, warmup: int, steps: int, cuda: bool):
        from torch.profiler import ProfilerActivity, profile

        self.path, self.warmup, self.steps, self.cuda = path, warmup, steps, cuda
        self.prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.prof.start()
        elif state.global_step == self.warmup + self.steps:
            if self.cuda:
                import torch

                torch.cuda.synchronize()
            self.prof.stop()
            export_trace(self.prof, self.path, self.cuda)


def train_config(s: Sizes, precision: str, steps: int, *, torch_compile: bool = False):
    from domain_embed.config import TrainingConfig

    never = 10**9  # no checkpoint or log on the way: the final save comes after the timed steps
    return TrainingConfig(loss="mnrl", num_negatives=1, batch_size=s.batch_size, max_steps=steps,
                          learning_rate=2e-5, precision=precision, logging_steps=never, save_steps=never,
                          eval_steps=never, torch_compile=torch_compile)


def _dataset(ctx: dict):
    s = ctx["sizes"]
    return obliqa_triplets(str(ctx["data"]), (s.warmup_steps + s.steps) * s.batch_size, SEED)


def _prepared(ctx: dict):
    model = minilm(ctx)
    sync(ctx)
    reset_peak(ctx)
    return model


def _timed(ctx: dict, model, dataset, precision: str, *, torch_compile: bool = False) -> tuple[StepTimer, str]:
    """One `train_model` run of the warm-up and timed steps: its StepTimer and peak GPU memory."""
    from domain_embed.tuning.trainer import train_model

    s = ctx["sizes"]
    timer = StepTimer(model, s.warmup_steps, ctx["cuda"])
    with tempfile.TemporaryDirectory() as tmp:
        train_model(model, dataset, None, train_config(s, precision, s.warmup_steps + s.steps,
                                                       torch_compile=torch_compile),
                    Path(tmp), seed=SEED, callbacks=[timer], device="cuda" if ctx["cuda"] else "cpu")
    return timer, peak_memory(ctx)


def _split(timer: StepTimer, precision: str) -> str:
    """Where a run's timed steps went, its tokens and its MFU."""
    gpu = (f"GPU inside steps {timer.gpu_s:.2f} s (busy {100 * timer.gpu_s / timer.wall:.0f}%)"
           if timer.gpu_s is not None else "no GPU")
    flops = 3 * timer.flops_per_token * timer.tokens  # forward and backward: 3 forwards' worth
    padding = timer.padded_tokens / max(timer.tokens, 1)
    return (f"{timer.wall:.2f} s: host between steps {timer.host_s:.2f} s, {gpu}; {timer.tokens:,} tokens "
            f"({padding:.2f}x with padding), {mfu(flops, timer.wall, peak_dtype(precision, training=True))}")


def check_training(ctx: dict) -> list[Row]:
    from domain_embed.tuning.trainer import train_model

    s, dataset = ctx["sizes"], _dataset(ctx)
    runs = alternate(*(Side(p, lambda model, p=p: _timed(ctx, model, dataset, p), prepare=lambda: _prepared(ctx))
                       for p in DTYPES), rounds=s.rounds)
    rows = []
    for precision, measured in runs.items():
        rates = [s.batch_size * timer.steps / timer.wall for timer, _ in measured.results]
        i = median_index([timer.wall for timer, _ in measured.results])
        (timer, peak), rate = measured.results[i], rates[i]
        rows.append(Row(f"train MNRL {precision}", f"{rate:,.0f} samples/s",
                        f"{timer.steps} steps x batch {s.batch_size} (query, positive, 1 hard negative; "
                        f"max_seq_length {s.max_seq_length}) timed after {s.warmup_steps} warm-up step(s), the final "
                        f"save left out; median of {s.rounds} runs alternated with the other precision "
                        f"[{min(rates):,.0f}, {max(rates):,.0f}]; {_split(timer, precision)}; {peak}",
                        judge(ctx, ("train bf16", rate)) if precision == "bf16" else ""))
    if ctx["profile"]:
        model = _prepared(ctx)
        trace = ProfileSteps(ctx["profile"] / "train_trace.json.gz", s.warmup_steps, s.profiled_steps, ctx["cuda"])
        with tempfile.TemporaryDirectory() as tmp:
            train_model(model, dataset, None, train_config(s, "bf16", s.warmup_steps + s.profiled_steps), Path(tmp),
                        seed=SEED, callbacks=[trace], device="cuda" if ctx["cuda"] else "cpu")
    return rows


def compiled_training_row(ctx: dict) -> Row:
    """`training.torch_compile=true` in bf16, one run (compiling is paid once per process): the warm-up steps, where
    the compiling happens, timed apart from the steps after them. Beside the eager bf16 row."""
    s = ctx["sizes"]
    model, dataset = _prepared(ctx), _dataset(ctx)
    t0 = time.perf_counter()
    timer, peak = _timed(ctx, model, dataset, "bf16", torch_compile=True)
    rate = s.batch_size * timer.steps / timer.wall
    return Row("train MNRL bf16 compiled", f"{rate:,.0f} samples/s",
               f"training.torch_compile=true: {timer.steps} steps x batch {s.batch_size} timed after "
               f"{s.warmup_steps} warm-up step(s), which took {timer.ended - timer.wall - t0:.0f} s from the loaded "
               f"model, compiling included; one run; {_split(timer, 'bf16')}; {peak}")
