"""The one training loop every recipe uses: accelerate for precision and devices, resumable checkpoints.

A recipe supplies the model, a `batches(step)` function that returns the batch of a given step (data order is
a pure function of the step, so a resumed run sees exactly the batches the interrupted one would have), and a
`loss_fn(model, batch)`. The loop owns the optimizer, the schedule, logging and checkpoints:
- checkpoints/step-N/ hold model, optimizer, scheduler and RNG state (accelerate's save_state), written to a
  temporary folder and renamed, so a crash mid-save never leaves a half checkpoint as the latest one;
- log.jsonl gets one line per logged step {step, loss, lr, seconds}.
Batches go to the accelerator's device (a GPU when there is one). With `workers`, a DataLoader builds the batches
of the coming steps in that many processes (images decoded and resized there), the same batches in the same order.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from tqdm.auto import tqdm


@dataclass
class LoopConfig:
    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    precision: str = "bf16"          # "bf16" (autocast) or "no"
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    lr_scale: dict = field(default_factory=dict)  # parameter-name prefix -> multiplier of lr (longest prefix wins)
    workers: int = 0                 # processes that build the next batches ahead (0: built in the loop)


def cosine_schedule(config: LoopConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to min_lr_ratio of the peak."""
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def parameter_groups(model: torch.nn.Module, config: LoopConfig) -> list[dict]:
    """AdamW groups: matrices decay, vectors (biases, norms) do not; lr_scale multiplies the lr of the
    parameters under a name prefix (e.g. a pre-trained tower that fast updates would wreck)."""
    groups: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefixes = [p for p in config.lr_scale if name.startswith(p)]
        scale = float(config.lr_scale[max(prefixes, key=len)]) if prefixes else 1.0
        groups.setdefault((scale, param.dim() >= 2), []).append(param)
    return [{"params": params, "lr": config.lr * scale, "weight_decay": config.weight_decay if decay else 0.0}
            for (scale, decay), params in groups.items()]


def _checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in (out_dir / "checkpoints").glob("step-*"):
        if path.is_dir() and path.name[5:].isdigit() and (path / "loop.json").exists():
            found.append((int(path.name[5:]), path))
    return sorted(found)


def train(model: torch.nn.Module, batches: Callable[[int], Any], loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
          config: LoopConfig, out_dir: str | Path, *, resume: bool = True, progress: bool = True,
          on_checkpoint: Callable[[int, torch.nn.Module], None] | None = None) -> list[dict]:
    """Train `model` for config.steps steps; returns the logged records. Resumes from the latest checkpoint."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.precision)
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.lr)
    schedule = cosine_schedule(config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    start = 0
    existing = _checkpoints(out_dir) if resume else []
    if existing:
        step, path = existing[-1]
        accelerator.load_state(str(path))
        start = step
    log_path = out_dir / "log.jsonl"
    records = []
    if start and log_path.exists():  # keep the log of the steps before the checkpoint only
        records = [r for r in map(json.loads, log_path.read_text().splitlines()) if r["step"] <= start]
    if accelerator.is_main_process:
        log_path.write_text("".join(json.dumps(r) + "\n" for r in records))

    model.train()
    bar = tqdm(total=config.steps, initial=start, desc="train", unit="step", disable=not progress)
    started, window = time.perf_counter(), []
    for step, batch in zip(range(start, config.steps), _batch_stream(batches, start, config)):
        batch = send_to_device(batch, accelerator.device)
        with accelerator.autocast():
            loss = loss_fn(model, batch)
        accelerator.backward(loss)
        if config.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(accelerator.reduce(loss.detach(), "mean").item())  # every rank's share of the step
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            record = {"step": done, "loss": sum(window) / len(window), "lr": config.lr * schedule(done),
                      "seconds": round(time.perf_counter() - started, 2)}
            records.append(record)
            if accelerator.is_main_process:
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            window = []
        bar.update(1)
        if done % config.save_every == 0 or done == config.steps:
            save_checkpoint(accelerator, out_dir, done, config.keep_checkpoints)
            if on_checkpoint is not None:
                on_checkpoint(done, accelerator.unwrap_model(model))
    bar.close()
    return records


class _StepBatches(torch.utils.data.Dataset):
    """batches(step) for the steps from `start`: a map-style dataset, so DataLoader workers can build them ahead."""

    def __init__(self, batches: Callable[[int], Any], start: int, steps: int):
        self.batches, self.start, self.steps = batches, start, steps

    def __len__(self) -> int:
        return self.steps - self.start

    def __getitem__(self, index: int) -> Any:
        return self.batches(self.start + index)


def _batch_stream(batches: Callable[[int], Any], start: int, config: LoopConfig):
    if config.workers <= 0:
        return (batches(step) for step in range(start, config.steps))
    # Its own generator: seeding the workers must not draw from the global RNG that dropout uses.
    loader = torch.utils.data.DataLoader(_StepBatches(batches, start, config.steps), batch_size=None,
                                         num_workers=config.workers, prefetch_factor=4,
                                         generator=torch.Generator().manual_seed(config.seed))
    return iter(loader)


def save_checkpoint(accelerator: Accelerator, out_dir: Path, step: int, keep: int) -> Path:
    """accelerate's full training state, written beside its final place, flushed and renamed into it.

    A save that fails (out of disk, say) removes its partial folder and raises one OSError saying so;
    the checkpoints before it are untouched. Partial folders of a run killed mid-save are removed here.
    """
    final = out_dir / "checkpoints" / f"step-{step}"
    main = accelerator.is_main_process
    if main:
        for stale in final.parent.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    # Every rank writes into the same folder (its RNG state; the main rank the rest): one name for all.
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") if accelerator.num_processes > 1 else None
    tmp = final.with_name(f".tmp-step-{step}-{run_id or os.getpid()}")
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if main:
            (tmp / "loop.json").write_text(json.dumps({"step": step}))
            for path in tmp.rglob("*"):  # on disk before the rename makes it the latest checkpoint
                if path.is_file():
                    with path.open("rb") as f:
                        os.fsync(f.fileno())
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        last = _checkpoints(out_dir)
        kept = f"the last good checkpoint, {last[-1][1]}, is intact" if last else "there is no earlier checkpoint"
        raise OSError(error.errno, f"could not save the step-{step} checkpoint ({error.strerror or error}); "
                      f"{kept}", str(tmp)) from error
    if main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in _checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
