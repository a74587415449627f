"""``diffgemma-ls tune``: adapt the shipped model to one repository, on the CPU, within a time budget.

A model of a few million parameters cannot know a repository's names and idioms; a few minutes of
training on the repository's own files can teach it some. The run:

1. lists the workspace's source files as the server indexes them (``workspace.source_files``:
   git-ignored, vendored, generated, binary and huge files skipped) in the languages the model
   completes, and holds out a tenth of the files (at least two; by a hash of their paths) for measuring;
2. measures the starting weights on line completions cut from the held-out files (as the bench cuts
   them), answered as the server answers an explicit request (``completion.complete_text``:
   context, decoding, the copy rival, post-processing);
3. trains with the shipped model's own objective (``training.objective``) on examples cut from
   the other files, with cross-file context from the same folder when the model reads it, for the
   wall-clock budget, checkpointing every ``CHECKPOINT_SECONDS`` (a later ``tune`` resumes);
4. measures again, and keeps the weights (``tuned.tune_dir(workspace)/model``) only when held-out
   edit similarity rose; otherwise it says so and the server goes on with the starting weights.
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from diffgemma_ls.bench.metrics import edit_similarity, normalize
from diffgemma_ls.bench.tasks import Task, cut_file
from diffgemma_ls.config import Settings
from diffgemma_ls.languages import language_for, served_languages
from diffgemma_ls.training.examples import InfillSampler, make_batch
from diffgemma_ls.training.objective import LossWeights, train_step
from diffgemma_ls.tuned import CHECKPOINT, WEIGHTS, Score, TuneRecord, tune_dir, weights_id
from diffgemma_ls.workspace import source_files

HELDOUT_FRACTION = 0.1
MIN_FILES = 4
MIN_TRAIN_BYTES = 8_000
HELDOUT_TASKS = 90
CHECKPOINT_SECONDS = 120.0
CANVAS_LENGTHS, CANVAS_WEIGHTS = (16, 32, 64), (0.25, 0.5, 0.25)  # as the shipped model was trained
LR, WARMUP_STEPS, DECAY_FRACTION, BATCH = 5e-4, 10, 0.3, 16


class TuneError(Exception):
    """A tune that cannot run here (too few files, a model it cannot train): the message says why."""


def split_files(workspace: Path, languages: list[str], max_files: int) -> tuple[list, list]:
    """``(train, heldout)``, each a list of ``(path relative to the workspace, text)``; the held-out
    files are those whose paths hash lowest, so the split stays put as files come and go."""
    files = [
        (path.relative_to(workspace).as_posix(), text)
        for path, text in source_files([workspace], max_files)
        if language_for(str(path)) in languages
    ]
    if len(files) < MIN_FILES or sum(len(t) for _, t in files) < MIN_TRAIN_BYTES:
        raise TuneError(
            f"{workspace} has too little code in {', '.join(languages)} to tune on "
            f"({len(files)} files; at least {MIN_FILES} and {MIN_TRAIN_BYTES // 1000} kB)"
        )
    files.sort(key=lambda f: hashlib.sha1(f[0].encode()).hexdigest())
    n_heldout = max(2, round(HELDOUT_FRACTION * len(files)))
    return files[n_heldout:], files[:n_heldout]


def heldout_tasks(workspace: Path, files: list[tuple[str, str]], n: int) -> list[Task]:
    """Up to ``n`` whole-line and line-tail tasks cut from the held-out files as the bench cuts them."""
    per_kind = -(-n // (2 * len(files))) + 1
    tasks = [
        task
        for relative, text in files
        for task in cut_file(relative, text, per_kind, folder=workspace)
        if task.mode == "line"
    ]
    random.Random(7).shuffle(tasks)
    return tasks[:n]


def measure(model_dir: Path, tasks: list[Task], settings: Settings) -> Score:
    """The model folder's answers to ``tasks`` as the server gives them on an explicit request
    (context, decoding, the copy rival, post-processing): what a user of the tuned weights gets."""
    from diffgemma_ls.completion import complete_text, load_engine

    engine = load_engine(Settings(model=str(model_dir), threads=settings.threads, prompt_caches=0))
    exact, similarity = 0, 0.0
    for task in tasks:
        outcome = complete_text(engine, task.prefix, task.suffix, "python", "line", settings, path=task.path)
        answer = outcome.completion.text if outcome.completion else ""
        exact += normalize(answer) == normalize(task.target)
        similarity += edit_similarity(answer, task.target)
    return Score(len(tasks), exact / max(1, len(tasks)), similarity / max(1, len(tasks)))


def _save_weights(model: DiffusionGemmaForBlockDiffusion, tokenizer, out: Path) -> None:
    """A model folder as the shipped one is stored: 16-bit weights, tokenizer, generation config."""
    if out.exists():
        shutil.rmtree(out)
    copy.deepcopy(model).to(torch.float16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _lr(frac: float, step: int) -> float:
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    decay = min(1.0, (1.0 - frac) / DECAY_FRACTION)
    return LR * warm * (0.1 + 0.9 * max(0.0, decay))


def tune(
    workspace: Path,
    base_dir: Path,
    minutes: float,
    settings: Settings,
    *,
    fresh: bool = False,
    say: Callable[[str], None] = print,
    heldout: int = HELDOUT_TASKS,
) -> TuneRecord:
    """Tune ``base_dir``'s weights on ``workspace`` for ``minutes`` of training (see the module doc);
    ``heldout`` completions measure it."""
    workspace = workspace.resolve()
    folder = tune_dir(workspace)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(base_dir, dtype=torch.float32)
    if getattr(model.config, "noise_kind", None) != "mask":
        raise TuneError(
            f"tune trains models with absorbing (mask) noise, as the shipped one; {base_dir} is not one"
        )
    languages = served_languages(getattr(model.config, "code_languages", None))
    train, held = split_files(workspace, languages, settings.workspace_max_files)
    base = weights_id(base_dir)
    record = TuneRecord.load(folder)
    checkpoint = folder / CHECKPOINT
    resume = not fresh and record is not None and record.base == base and checkpoint.is_file()
    if not resume:
        shutil.rmtree(folder, ignore_errors=True)
        record = TuneRecord(str(workspace), base)
    assert record is not None
    record.train_files, record.heldout_files = len(train), len(held)
    tasks = heldout_tasks(workspace, held, heldout)
    if not tasks:
        raise TuneError(f"none of the held-out files of {workspace} parses: nothing to measure a tune on")
    key = hashlib.sha1("\0".join([t.task_id for t in tasks]).encode()).hexdigest()
    if record.heldout_key != key:  # new tasks (the files changed): earlier scores do not compare
        record.heldout_key, record.before = key, None
        record.after = None
    if record.before is None:
        say(f"measuring the starting weights: {len(tasks)} line completions, {len(held)} held-out files")
        record.before = measure(base_dir, tasks, settings)
        record.save(folder)
    say(_score_line("before", record.before))

    torch.set_num_threads(settings.threads or os.cpu_count() or 1)  # the user waits for it: every core
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    if resume:
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        say(f"resuming after {record.steps} steps ({record.train_seconds / 60:.1f} minutes)")
    reads_snippets = bool(getattr(model.config, "cross_file_context", False))
    sampler = InfillSampler.of_files(train, tokenizer, 0.7 if reads_snippets else 0.0, vary_window=True)
    rng = random.Random(record.steps)
    gen = torch.Generator().manual_seed(record.steps)
    weights = LossWeights()
    model.train()
    budget = minutes * 60
    started = last_checkpoint = time.monotonic()
    first_step = record.steps
    bar = tqdm(
        total=round(budget), unit="s", desc="tune", file=sys.stderr, disable=not sys.stderr.isatty(),
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
    )  # fmt: skip
    with bar:
        while (elapsed := time.monotonic() - started) < budget:
            step_started = time.monotonic()
            for group in opt.param_groups:
                group["lr"] = _lr(elapsed / budget, record.steps - first_step)
            canvas = rng.choices(CANVAS_LENGTHS, CANVAS_WEIGHTS)[0]
            examples = [sampler.sample(rng) for _ in range(BATCH)]
            batch = make_batch(examples, canvas, rng, tokenizer.pad_token_id, tokenizer.eos_token_id)
            losses = train_step(model, opt, batch, gen, weights)
            record.steps += 1
            record.tokens += int(batch.enc_len.sum()) + batch.canvas.numel()
            record.train_seconds += time.monotonic() - step_started
            bar.set_postfix_str(f"step {record.steps}, loss {losses['loss']:.3f}")
            bar.update(round(time.monotonic() - started) - bar.n)
            if bar.disable and record.steps % 50 == 0:
                left = max(0.0, budget - (time.monotonic() - started))
                say(f"step {record.steps}, loss {losses['loss']:.3f}, {left / 60:.1f} minutes left")
            if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                _checkpoint(model, opt, record, folder)
                last_checkpoint = time.monotonic()
    _checkpoint(model, opt, record, folder)
    model.eval()

    candidate = folder / "candidate"
    _save_weights(model, tokenizer, candidate)
    score = measure(candidate, tasks, settings)
    say(_score_line("after", score))
    kept_dir = folder / WEIGHTS
    best = record.after if record.kept and record.after is not None and kept_dir.is_dir() else record.before
    better = score.similarity > best.similarity
    if better:
        _replace(kept_dir, candidate)
        record.kept, record.after = True, score
        say(f"kept: the server uses these weights for files in {workspace} ({kept_dir})")
    else:
        shutil.rmtree(candidate)
        if not record.kept:
            record.after = score
        which = "the weights kept before" if record.kept else "the starting weights"
        say(f"not kept: this tune did not improve held-out completions; {which} stay in use")
    record.history.append({"minutes": minutes, "steps": record.steps, "score": vars(score), "kept": better})
    record.save(folder)
    return record


def _replace(kept_dir: Path, candidate: Path) -> None:
    """Swap in the candidate weights so that a kill at any point leaves a loadable folder or none."""
    old = kept_dir.with_name(WEIGHTS + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if kept_dir.exists():
        kept_dir.rename(old)
    candidate.rename(kept_dir)
    shutil.rmtree(old, ignore_errors=True)


def _checkpoint(model, opt, record: TuneRecord, folder: Path) -> None:
    """Weights and optimizer, atomically (a kill mid-write leaves the previous one), and the record."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CHECKPOINT + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp)
    tmp.replace(folder / CHECKPOINT)
    record.save(folder)


def _score_line(when: str, score: Score) -> str:
    return (
        f"{when}: line exact match {100 * score.exact:.1f}%, "
        f"edit similarity {100 * score.similarity:.1f}% ({score.tasks} held-out completions)"
    )
