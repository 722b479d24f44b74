"""Train an hf_attn model with accelerate: one CPU, many GPUs, or FSDP/DeepSpeed, same code.

Python API (what `hf-attn-train` calls):

    from hf_attn.train import CorpusSpec, ModelOptions, TrainArgs, train
    result = train(TrainArgs(output_dir="runs/mla", model=ModelOptions(preset="small", attention_type="mla"),
                             corpus=CorpusSpec(max_chars=200_000), max_steps=300))

The loop reads top to bottom: `setup` (accelerator, data, tokenizer, model, optimizer), then per
step `train_step`, `log_interval`, `evaluate_interval` and `save_checkpoint`, then `finish`.
`RunState` is what a checkpoint saves besides accelerate's own state.

`train(args) -> dict` with keys
    model_dir                 the output dir: final model (safetensors + modeling code) and tokenizer
    params                    parameter count (tied weights once)
    kv_cache_elements_per_token, kv_cache_bytes_per_token (16-bit cache: 2 bytes per element)
    val_loss, perplexity, val_bits_per_char, val_bits_per_byte   of the final evaluation
    train_loss                mean train loss over the last evaluation interval
    train_tokens_per_s        training tokens per second of training time (evaluation excluded)
    wall_s                    seconds from the call to the return (this process, resumed part only)
    peak_memory_bytes         torch.cuda.max_memory_allocated on GPU, else the process's max RSS
    steps, tokens             optimizer steps done and training tokens seen (all processes)
    num_processes, history    history: the metrics.jsonl records, one per evaluation
    sample, sample_prompt     greedy continuation of a fixed prompt, as in report.md

A run's output dir holds: config.json/model.safetensors/modeling files and the tokenizer (top
level, so `from_pretrained(output_dir, trust_remote_code=True)` and `pipeline(...)` work),
checkpoints/checkpoint-STEP (accelerate `save_state` folders, written into a temporary folder and
renamed, the last `keep_checkpoints` kept), metrics.jsonl (per evaluation: step, tokens,
train_loss (mean over the steps since the previous evaluation), val_loss, perplexity,
val_bits_per_char, val_bits_per_byte, lr, elapsed_s (seconds spent in training steps so far,
evaluation and checkpointing excluded, summed over resumed parts), step_time_s), train_log.jsonl (per
`log_every` steps), train_args.json, run_info.json (world size, per-process first-batch hashes),
report.md, loss.png and tensorboard/ (with tracker="tensorboard").

Nothing is lost on the way. The final model, tokenizer, report and plot are written into
tmp-final/ and moved up with config.json last, so the folder holds a complete model or none a
loader would take. --overwrite trains in OUTPUT_DIR.overwrite-tmp and replaces the old run only
once the new one is complete. --resume first compares the run's train_args.json (`RESUME_KEYS`) and
the checkpoint's tensor shapes with this command's, and writes nothing if they differ. A checkpoint
that cannot be written (a full disk) is removed and reported with the space it needs; the previous
one stays. A run whose final validation loss is not finite saves no final model.

Data order is a function of (seed, epoch): accelerate's seedable sampler draws each epoch's
permutation from `seed + epoch` and shards it over processes, so a resumed run skips exactly the
micro-batches it already consumed (`skip_first_batches`) and sees what an uninterrupted run sees.
`batch_size` is per process: a step consumes batch_size * grad_accum * num_processes blocks.

With --fsdp (under torchrun, CPU or GPU) the model is sharded by torch's FSDP2 with transformers'
plan (`sharding`) before the optimizer is built; both stay out of `accelerator.prepare`, each
checkpoint adds the sharded model and optimizer state (`checkpoint-STEP/fsdp/`), and the final
model is gathered whole into the same folder layout as without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, ProjectConfiguration, set_seed
from safetensors import SafetensorError
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..loading import check_coverage, file_shapes, load_model, read_json_object
from ..loading import load_tokenizer as load_saved_tokenizer
from ..model.configuration_hf_attn import HfAttnConfig
from ..model.modeling_hf_attn import HfAttnForCausalLM
from ..utils import HfAttnError, append_jsonl, check_output_dir, flag, peak_rss_bytes, read_jsonl, write_jsonl
from .data import load_text_splits, pack_splits
from .evaluation import evaluate_loss, lm_metrics
from .optim import make_optimizer, make_schedule
from .options import TrainArgs, build_config
from .report import plot_losses, write_report
from .sharding import check_checkpoint_kind, check_launch, consolidated_model, load_sharded, save_sharded, shard_model

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
RUN_MARKER = "train_args.json"  # a folder holding it is an hf_attn run
FINAL_TMP = "tmp-final"  # the final model, tokenizer and report are written here, then moved up
OVERWRITE_SUFFIX = ".overwrite-tmp"  # an --overwrite run trains beside the run it replaces
# Options a resumed run must share with the run it continues: they fix the model, the data and its order.
RESUME_KEYS = (
    "model",
    "corpus",
    "tokenizer",
    "train_tokenizer_vocab",
    "block_size",
    "batch_size",
    "grad_accum",
    "seed",
    "optimizer",  # its state in a checkpoint fits only the same optimizer
)
# How a write that ran out of disk (or failed otherwise) shows up in safetensors' and torch's errors.
WRITE_FAILURES = ("No space left", "os error", "I/O error", "inline_container", "PytorchStreamWriter", "write failed")


def _new_interval() -> dict:
    return {"losses": [], "time": 0.0}


@dataclass
class RunState:
    """Progress that a checkpoint saves (trainer_state.json) besides accelerate's own state.

    `intervals` holds the per-step losses and seconds since the last log and the last evaluation,
    so that a resumed run logs the same interval means as an uninterrupted one.
    """

    step: int = 0
    tokens: int = 0
    train_time_s: float = 0.0
    intervals: dict = field(default_factory=lambda: {"log": _new_interval(), "eval": _new_interval()})

    def save(self, folder: str) -> None:
        with open(os.path.join(folder, "trainer_state.json"), "w") as f:
            json.dump(dataclasses.asdict(self), f)

    @classmethod
    def load(cls, folder: str) -> RunState:
        with open(os.path.join(folder, "trainer_state.json")) as f:
            return cls(**json.load(f))


@dataclass
class Run:
    """What a run holds after setup: its pieces, prepared by accelerate, and its derived sizes."""

    args: TrainArgs
    accelerator: Accelerator
    tokenizer: object
    config: HfAttnConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: DataLoader
    val_loader: DataLoader
    val_stats: dict
    max_steps: int
    tokens_per_step: int
    eval_batches: int
    start: float
    resume_from: str | None
    run_dir: str  # the output dir, or beside it while an --overwrite run is not finished (`plan_run_dir`)
    last_val_loss: float | None = None  # of the newest evaluation, on every process

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)


# ---------------------------------------------------------------- setup


def latest_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint folder (temporary folders of an interrupted save are ignored)."""
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return None
    steps = [int(m.group(1)) for name in os.listdir(root) if (m := CHECKPOINT_RE.match(name))]
    return os.path.join(root, f"checkpoint-{max(steps)}") if steps else None


def make_accelerator(args: TrainArgs, run_dir: str) -> Accelerator:
    """The run's accelerator; a --fsdp launch that cannot shard is refused here, before anything is written.

    Under --fsdp the model's precision is FSDP2's policy (`sharding`), and torchrun's processes on a
    machine without an accelerator form one gloo group (MULTI_CPU) only when accelerate is told `cpu`.
    """
    accelerator = Accelerator(
        cpu=args.fsdp and not torch.accelerator.is_available(),
        mixed_precision="no" if args.fsdp else args.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.grad_accum,
            sync_with_dataloader=False,  # steps never end at an epoch's end
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        step_scheduler_with_optimizer=False,  # stepped by hand, once per optimizer step
        log_with=None if args.tracker == "none" else args.tracker,
        project_config=ProjectConfiguration(project_dir=run_dir, logging_dir=os.path.join(run_dir, "tensorboard")),
    )
    if args.fsdp:
        check_launch(accelerator.num_processes, args.mixed_precision)
    return accelerator


def plan_run_dir(args: TrainArgs) -> str:
    """Where the run writes: the output dir, or `OUTPUT_DIR.overwrite-tmp` beside it when --overwrite
    replaces a run there (the old run is replaced only once the new one is complete). Writes nothing."""
    if check_output_dir(args.output_dir, RUN_MARKER, overwrite=args.overwrite, keep=args.resume):
        return os.path.normpath(args.output_dir) + OVERWRITE_SUFFIX
    return args.output_dir


def check_resume(args: TrainArgs) -> None:
    """Refuse --resume with options that change the model, the data or its order (`RESUME_KEYS`)."""
    path = os.path.join(args.output_dir, RUN_MARKER)
    if not os.path.isfile(path):
        raise HfAttnError(f"--resume: {path} is missing, so the run's options cannot be compared; nothing was changed")
    saved = read_json_object(path)
    saved.setdefault("optimizer", "adamw")  # a run from before --optimizer
    given = json.loads(json.dumps(args.record(), default=str))
    differences = []
    for key in RESUME_KEYS:
        old, new = saved.get(key), given.get(key)
        if isinstance(old, dict) and isinstance(new, dict):  # model and corpus: flags of their own
            differences += [
                (k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
            ]
        elif old != new:
            differences.append((key, old, new))
    if differences:
        name, old, new = differences[0]
        more = f" (and {len(differences) - 1} more options)" if len(differences) > 1 else ""
        old, new = ("unset" if v is None else repr(v) for v in (old, new))
        raise HfAttnError(
            f"--resume: the run in {args.output_dir} has {flag(name)} {old}, this command gives {new}{more}; "
            f"resume with the run's own options ({path}) or give another --output-dir; nothing was changed"
        )


def resume_checkpoint(args: TrainArgs) -> str | None:
    """With --resume, the newest checkpoint of the output dir, once `check_resume` passed; writes nothing."""
    if not args.resume:
        return None
    resume_from = latest_checkpoint(args.output_dir)
    if resume_from is None:
        raise FileNotFoundError(
            f"--resume: {args.output_dir!r} holds no checkpoint (checkpoints/checkpoint-STEP) to resume from; "
            "run without --resume to start a new run"
        )
    check_resume(args)
    check_checkpoint_kind(resume_from, args.fsdp)
    return resume_from


def create_run_dir(args: TrainArgs, run_dir: str, accelerator: Accelerator) -> None:
    """Create the folder a new run writes into (see `plan_run_dir`) and mark it as a run.

    A resume writes nothing here: `start_or_resume` records its options once the checkpoint has loaded.
    """
    accelerator.wait_for_everyone()  # every process has checked before the main one writes anything
    if accelerator.is_main_process and not args.resume:
        if run_dir != args.output_dir and os.path.isdir(run_dir):  # left by an --overwrite run that was killed
            if check_output_dir(run_dir, RUN_MARKER, overwrite=True):
                shutil.rmtree(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, RUN_MARKER), "w") as f:  # marks the folder as a run at once
            json.dump(args.record(), f, indent=2, default=str)
    accelerator.wait_for_everyone()


def remove_partial_saves(run_dir: str) -> None:
    """Folders of saves cut short by a kill: tmp-checkpoint-STEP and the staged final model."""
    ckpt_root = os.path.join(run_dir, "checkpoints")
    partial = [os.path.join(ckpt_root, n) for n in os.listdir(ckpt_root)] if os.path.isdir(ckpt_root) else []
    for path in [os.path.join(run_dir, FINAL_TMP), *partial]:
        if os.path.basename(path).startswith("tmp-") and os.path.isdir(path):
            shutil.rmtree(path)


def saved_tokenizer(args: TrainArgs):
    """The --init-from model's tokenizer, or the one at `args.tokenizer` (checked by `loading.load_tokenizer`)."""
    if args.model.init_from is not None:
        return load_saved_tokenizer(args.model.init_from)
    if not os.path.isdir(args.tokenizer):
        raise FileNotFoundError(
            f"tokenizer path {args.tokenizer!r} does not exist; give --tokenizer DIR or --train-tokenizer-vocab N"
        )
    return load_saved_tokenizer(args.tokenizer)


def trained_tokenizer(args: TrainArgs, run_dir: str, train_texts, accelerator: Accelerator):
    """A fresh BPE trained on the train split and saved in the run folder (kept on resume)."""
    saved = os.path.join(run_dir, "tokenizer.json")
    with accelerator.main_process_first():
        if os.path.isfile(saved) and (args.resume or not accelerator.is_main_process):
            return load_saved_tokenizer(run_dir)
        from .tokenizer import build_bpe_tokenizer

        tokenizer = build_bpe_tokenizer(train_texts, vocab_size=args.train_tokenizer_vocab, show_progress=False)
        tokenizer.save_pretrained(run_dir)
        return tokenizer


def initial_model(args: TrainArgs, config: HfAttnConfig) -> HfAttnForCausalLM:
    """A freshly initialised model, or the --init-from model's weights (in float32, for training)."""
    if args.model.init_from is None:
        return HfAttnForCausalLM(config)
    return load_model(args.model.init_from, HfAttnForCausalLM, config=config, dtype=torch.float32)


def total_steps(args: TrainArgs, tokens_per_step: int) -> int:
    """--max-steps, or the steps that --max-tokens needs (the smaller if both), else 1000."""
    if args.max_tokens is None:
        return args.max_steps if args.max_steps is not None else 1000
    by_tokens = math.ceil(args.max_tokens / tokens_per_step)
    return by_tokens if args.max_steps is None else min(args.max_steps, by_tokens)


def build_model(args: TrainArgs, tokenizer, splits) -> tuple[HfAttnConfig, object, HfAttnForCausalLM]:
    """The model config, the packed data and the initial model (seeded) of a run."""
    config = build_config(args.model, tokenizer, args.block_size)
    data = pack_splits(splits, tokenizer, args.block_size)
    set_seed(args.seed)
    return config, data, initial_model(args, config)


def setup(args: TrainArgs) -> Run:
    """Everything before the first step: output dir, data, tokenizer, model, optimizer, schedule.

    A saved tokenizer, the data and an --init-from model are checked before the output dir is
    touched; a tokenizer trained for the run needs the folder to be saved in.
    """
    start = time.perf_counter()
    if args.model.init_from is not None and args.train_tokenizer_vocab is not None:
        raise ValueError("--train-tokenizer-vocab contradicts --init-from: the model comes with its tokenizer")
    run_dir = plan_run_dir(args)
    accelerator = make_accelerator(args, run_dir)
    resume_from = resume_checkpoint(args)
    splits = load_text_splits(args.corpus)
    if args.train_tokenizer_vocab is None:
        tokenizer = saved_tokenizer(args)
        config, data, model = build_model(args, tokenizer, splits)
        create_run_dir(args, run_dir, accelerator)
    else:
        create_run_dir(args, run_dir, accelerator)
        tokenizer = trained_tokenizer(args, run_dir, splits["train"]["text"], accelerator)
        config, data, model = build_model(args, tokenizer, splits)
    if args.fsdp:  # before the optimizer is built: it holds the shards
        model = shard_model(model.to(accelerator.device), accelerator.num_processes, args.mixed_precision)
    optimizer = make_optimizer(model, args)
    tokens_per_step = args.batch_size * args.grad_accum * accelerator.num_processes * args.block_size
    max_steps = total_steps(args, tokens_per_step)
    scheduler = make_schedule(optimizer, args, max_steps)
    train_loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(data.validation, batch_size=args.batch_size, shuffle=False)
    # Under --fsdp the sharded model and its optimizer stay torch's own (see `sharding`).
    own = () if args.fsdp else (model, optimizer)
    *own, scheduler, train_loader, val_loader = accelerator.prepare(*own, scheduler, train_loader, val_loader)
    model, optimizer = own or (model, optimizer)
    if len(train_loader) == 0:
        raise ValueError(
            f"the train split has {len(data.train)} blocks: fewer than one batch of {args.batch_size} per process"
        )
    eval_batches = args.eval_batches if args.eval_batches is not None else min(len(val_loader), 100)
    return Run(
        args=args,
        accelerator=accelerator,
        tokenizer=tokenizer,
        config=config,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        val_loader=val_loader,
        val_stats=data.stats["validation"],
        max_steps=max_steps,
        tokens_per_step=tokens_per_step,
        eval_batches=eval_batches,
        start=start,
        resume_from=resume_from,
        run_dir=run_dir,
    )


def start_or_resume(run: Run) -> RunState:
    """Load the checkpoint's state (dropping log records written after it), or start the records anew."""
    records = (run.path("metrics.jsonl"), run.path("train_log.jsonl"))
    state = RunState()
    if run.resume_from is not None:
        weights = os.path.join(run.resume_from, "model.safetensors")
        if os.path.isfile(weights):  # a sharded (FSDP) checkpoint is checked by accelerate itself
            check_coverage(
                run.resume_from,
                run.accelerator.unwrap_model(run.model),
                file_shapes([weights]),
                against="the model these options build",
                hint="the checkpoint was written by another model configuration; nothing was changed",
            )
        run.accelerator.load_state(run.resume_from)
        if run.args.fsdp:
            load_sharded(run.model, run.optimizer, run.resume_from)
        state = RunState.load(run.resume_from)
        if run.is_main:  # the first writes of a resume, once the checkpoint has loaded
            remove_partial_saves(run.run_dir)
            with open(run.path(RUN_MARKER), "w") as f:
                json.dump(run.args.record(), f, indent=2, default=str)
            for path in records:
                write_jsonl(path, [r for r in read_jsonl(path) if r["step"] <= state.step])
            print(f"resuming from {run.resume_from} (step {state.step})", file=sys.stderr)
    elif run.is_main:
        for path in records:
            if os.path.exists(path):
                os.remove(path)
    if run.args.tracker != "none":
        flat = {k: v for k, v in run.args.record().items() if isinstance(v, (int, float, str, bool))}
        run.accelerator.init_trackers("hf_attn", config=flat)
    return state


# ---------------------------------------------------------------- the step


def micro_batches(run: Run, consumed: int) -> Iterator[torch.Tensor]:
    """The per-process micro-batch stream from micro-batch `consumed` on, epoch after epoch.

    Data order is a function of (seed, epoch), so a resumed run skips exactly what it consumed.
    """
    loader = run.train_loader
    epoch, skip = divmod(consumed, len(loader))
    while True:
        loader.set_epoch(epoch)
        epoch_loader = run.accelerator.skip_first_batches(loader, skip) if skip else loader
        epoch_loader.set_epoch(epoch)
        for batch in epoch_loader:
            yield batch["input_ids"]
        epoch, skip = epoch + 1, 0


def train_step(run: Run, stream: Iterator[torch.Tensor], state: RunState) -> None:
    """One optimizer step over `grad_accum` micro-batches; updates `state`."""
    args, accelerator, model = run.args, run.accelerator, run.model
    step_start = time.perf_counter()
    step_loss = torch.zeros((), device=accelerator.device)
    for micro in range(args.grad_accum):
        input_ids = next(stream)
        if state.step == 0 and micro == 0:
            record_first_batch(run, input_ids)
        with accelerator.accumulate(model):
            loss = model(input_ids=input_ids, labels=input_ids).loss
            accelerator.backward(loss)
            # accelerate's optimizer would skip the other micro-batches itself; FSDP's is torch's own
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                run.optimizer.step()
                run.optimizer.zero_grad()
        step_loss += loss.detach()
    run.scheduler.step()
    elapsed = time.perf_counter() - step_start
    # mean over the step's micro-batches and processes (one scalar all-reduce)
    loss_value = accelerator.reduce(step_loss, "mean").item() / args.grad_accum
    state.step += 1
    state.tokens += run.tokens_per_step
    state.train_time_s += elapsed
    for interval in state.intervals.values():
        interval["losses"].append(loss_value)
        interval["time"] += elapsed


def record_first_batch(run: Run, input_ids: torch.Tensor) -> None:
    """run_info.json: the world size and a hash of each process's first batch (shows sharding)."""
    digest = int(hashlib.sha256(input_ids.cpu().numpy().tobytes()).hexdigest()[:12], 16)
    hashes = run.accelerator.gather(torch.tensor([digest], device=run.accelerator.device))
    if run.is_main:
        with open(run.path("run_info.json"), "w") as f:
            json.dump({"num_processes": run.accelerator.num_processes, "first_batch_hashes": hashes.tolist()}, f)


def out_of_time(run: Run) -> bool:
    """--max-time is spent; every process agrees, so all stop at the same step."""
    if run.args.max_time is None:
        return False
    spent = time.perf_counter() - run.start >= run.args.max_time
    if run.accelerator.num_processes > 1:
        flag = torch.tensor(float(spent), device=run.accelerator.device)
        spent = run.accelerator.reduce(flag).item() > 0
    return spent


# ---------------------------------------------------------------- logging, evaluation, checkpoints


def log_interval(run: Run, state: RunState, progress: tqdm) -> None:
    """train_log.jsonl, the tracker and the progress bar: mean loss and step time since the last log."""
    interval = state.intervals["log"]
    n = len(interval["losses"])
    record = {
        "step": state.step,
        "tokens": state.tokens,
        "train_loss": sum(interval["losses"]) / n,
        "lr": run.scheduler.get_last_lr()[0],
        "step_time_s": interval["time"] / n,
        "elapsed_s": state.train_time_s,
    }
    tok_s = run.tokens_per_step * n / interval["time"]
    progress.set_postfix(loss=f"{record['train_loss']:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{tok_s:.0f}")
    run.accelerator.log(
        {"train/loss": record["train_loss"], "train/lr": record["lr"], "train/step_time_s": record["step_time_s"]},
        step=state.step,
    )
    if run.is_main:
        append_jsonl(run.path("train_log.jsonl"), record)
    state.intervals["log"] = _new_interval()


def evaluate_interval(run: Run, state: RunState, progress: tqdm) -> None:
    """metrics.jsonl: validation metrics now, with the train loss and step time since the last evaluation."""
    mean_loss, _ = evaluate_loss(run.model, run.val_loader, run.accelerator, max_batches=run.eval_batches)
    metrics = lm_metrics(mean_loss, run.val_stats)
    run.last_val_loss = metrics["val_loss"]
    interval = state.intervals["eval"]
    n = len(interval["losses"])  # 0 for --eval-on-start
    record = {
        "step": state.step,
        "tokens": state.tokens,
        "train_loss": sum(interval["losses"]) / n if n else None,
        "val_loss": metrics["val_loss"],
        "perplexity": metrics["perplexity"],
        "val_bits_per_char": metrics["bits_per_char"],
        "val_bits_per_byte": metrics["bits_per_byte"],
        "lr": run.scheduler.get_last_lr()[0],
        "elapsed_s": state.train_time_s,
        "step_time_s": interval["time"] / n if n else None,
    }
    logged = {f"eval/{k}": v for k, v in record.items() if k not in ("step", "tokens") and v is not None}
    run.accelerator.log(logged, step=state.step)
    if run.is_main:
        append_jsonl(run.path("metrics.jsonl"), record)
        train_loss = "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
        progress.write(
            f"step {state.step}: train {train_loss} val {record['val_loss']:.4f} bpc {record['val_bits_per_char']:.4f}"
        )
    state.intervals["eval"] = _new_interval()


def save_checkpoint(run: Run, state: RunState) -> None:
    """`save_state` into checkpoints/tmp-checkpoint-STEP, then rename: a kill mid-save leaves the last one.

    A save that fails (a full disk) removes its temporary folder and ends the run with the space it
    needed; the previous checkpoint is untouched.
    """
    accelerator = run.accelerator
    root = run.path("checkpoints")
    tmp = os.path.join(root, f"tmp-checkpoint-{state.step}")
    final = os.path.join(root, f"checkpoint-{state.step}")
    previous = latest_checkpoint(run.run_dir)
    if run.is_main and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(tmp)  # every process writes its RNG state; the main one the rest
        if run.args.fsdp:
            save_sharded(run.model, run.optimizer, tmp)  # every process its shards
        if run.is_main:
            state.save(tmp)
    except (OSError, RuntimeError, SafetensorError) as error:
        if not _is_write_failure(error):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        needed = _folder_bytes(previous) if previous else 3 * _parameter_bytes(run)  # weights + AdamW's 2 moments
        kept = f"the last complete checkpoint, {previous}, is kept" if previous else "no checkpoint was complete"
        raise save_failure(f"checkpoint at step {state.step}", tmp, error, needed, kept) from None
    accelerator.wait_for_everyone()
    if run.is_main:
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        steps = sorted(int(m.group(1)) for n in os.listdir(root) if (m := CHECKPOINT_RE.match(n)))
        for old in steps[: max(0, len(steps) - run.args.keep_checkpoints)]:
            shutil.rmtree(os.path.join(root, f"checkpoint-{old}"))
    accelerator.wait_for_everyone()


def _is_write_failure(error: BaseException) -> bool:
    return isinstance(error, OSError) or any(mark in str(error) for mark in WRITE_FAILURES)


def save_failure(what: str, tmp: str, error: BaseException, needed: int, kept: str) -> HfAttnError:
    """One line for a save that could not be written: the folder, the reason and the space it needs."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).strip().splitlines()[0]
    free = shutil.disk_usage(os.path.dirname(tmp) or ".").free
    return HfAttnError(
        f"{what}: writing {tmp} failed ({reason}); the partial folder was removed and {kept}. "
        f"It needs about {needed / 2**20:,.1f} MiB; {free / 2**20:,.1f} MiB are free there"
    )


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def _parameter_bytes(run: Run) -> int:
    return sum(p.numel() * p.element_size() for p in run.accelerator.unwrap_model(run.model).parameters())


# ---------------------------------------------------------------- the loop


def train(args: TrainArgs) -> dict:
    """Train per `args`, write the run's outputs (see the module docstring) and return its summary."""
    run = setup(args)
    state = start_or_resume(run)
    stream = micro_batches(run, state.step * args.grad_accum)
    progress = tqdm(total=run.max_steps, initial=state.step, disable=not (run.is_main and args.progress), desc="train")
    if args.eval_on_start and state.step == 0:
        evaluate_interval(run, state, progress)
    run.model.train()
    while state.step < run.max_steps:
        train_step(run, stream, state)
        progress.update(1)
        last = state.step >= run.max_steps or out_of_time(run)
        if last or _every(state.step, args.log_every):
            log_interval(run, state, progress)
        if last or _every(state.step, args.eval_every):
            evaluate_interval(run, state, progress)
        if last:
            break
        if _every(state.step, args.save_every):
            save_checkpoint(run, state)
    progress.close()
    run.accelerator.wait_for_everyone()
    return finish(run, state)


def _every(step: int, interval: int) -> bool:
    """Whether `step` is a multiple of `interval`; an interval of 0 means never (only at the end)."""
    return interval > 0 and step % interval == 0


def finish(run: Run, state: RunState) -> dict:
    """Save the final model and tokenizer, generate the sample, write report.md and loss.png.

    They are written into `tmp-final` and moved up with config.json last (`publish`), so the folder
    holds a complete model or none that `from_pretrained` would load; an --overwrite run then takes
    the place of the run it replaces (`replace_run`). A diverged run (a non-finite validation loss)
    saves no final model.
    """
    accelerator = run.accelerator
    if run.last_val_loss is None or not math.isfinite(run.last_val_loss):
        last = latest_checkpoint(run.run_dir)
        raise HfAttnError(
            f"training diverged: the validation loss at step {state.step} is {run.last_val_loss} "
            f"({run.path('metrics.jsonl')}); no final model was saved"
            + (f"; the last checkpoint is {last}" if last else "")
        )
    if run.args.fsdp:  # the full weights gathered into an unsharded model on the main process
        unwrapped, state_dict = consolidated_model(run.model, run.config, run.is_main)
    else:
        unwrapped = accelerator.unwrap_model(run.model)
        state_dict = accelerator.get_state_dict(run.model)  # a collective under FSDP/DeepSpeed: every process joins
    summary = summarize(run, state, unwrapped)
    staged = run.path(FINAL_TMP)
    if run.is_main:
        if os.path.isdir(staged):
            shutil.rmtree(staged)
        try:
            unwrapped.save_pretrained(staged, state_dict=state_dict, safe_serialization=True)
            run.tokenizer.model_max_length = run.config.max_position_embeddings
            run.tokenizer.save_pretrained(staged)
            summary["sample"] = generate_sample(
                unwrapped, run.tokenizer, run.args.sample_prompt, run.args.sample_tokens
            )
            plot_losses(os.path.join(staged, "loss.png"), summary["history"], read_jsonl(run.path("train_log.jsonl")))
        except (OSError, RuntimeError, SafetensorError) as error:
            _final_save_failed(run, staged, error)
    summary["peak_memory_bytes"] = peak_memory_bytes()
    summary["wall_s"] = time.perf_counter() - run.start
    if run.is_main:
        try:
            write_report(
                os.path.join(staged, "report.md"), summary, run.config.to_dict(), run.args.record(), summary["sample"]
            )
            publish(staged, run.run_dir)
        except OSError as error:
            _final_save_failed(run, staged, error)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # also tears down the process group
    if run.is_main and run.run_dir != run.args.output_dir:
        replace_run(run.run_dir, run.args.output_dir)
    return summary


def _final_save_failed(run: Run, staged: str, error: BaseException) -> None:
    if not _is_write_failure(error):
        raise error
    shutil.rmtree(staged, ignore_errors=True)
    last = latest_checkpoint(run.run_dir)
    kept = f"the last checkpoint, {last}, is kept" if last else "no final model was saved"
    raise save_failure("the final model", staged, error, _parameter_bytes(run), kept) from None


def publish(staged: str, folder: str) -> None:
    """Move the files of `staged` into `folder`, config.json last, and remove `staged`.

    Every move is an atomic rename on one disk. An older config.json goes first, so that until the
    new one lands no loader takes the folder for a model whose weights or tokenizer are still missing.
    """
    old_config = os.path.join(folder, "config.json")
    if os.path.isfile(old_config):
        os.remove(old_config)
    for name in sorted(os.listdir(staged), key=lambda n: n == "config.json"):
        os.replace(os.path.join(staged, name), os.path.join(folder, name))
    os.rmdir(staged)


def replace_run(new: str, output_dir: str) -> None:
    """Put the finished run `new` in the place of `output_dir` (the run an --overwrite replaces)."""
    aside = os.path.normpath(output_dir) + ".replaced-tmp"
    if os.path.isdir(aside):
        shutil.rmtree(aside)
    if os.path.isdir(output_dir):
        os.replace(output_dir, aside)
    os.replace(new, output_dir)
    if os.path.isdir(aside):
        shutil.rmtree(aside)


def summarize(run: Run, state: RunState, model) -> dict:
    """The run's summary (see the module docstring), from the final evaluation record."""
    history = read_jsonl(run.path("metrics.jsonl")) if run.is_main else []
    final = history[-1] if history else {}
    return {
        "model_dir": run.args.output_dir,
        "params": model.num_parameters(),
        "kv_cache_elements_per_token": run.config.kv_cache_elements_per_token,
        "kv_cache_bytes_per_token": 2 * run.config.kv_cache_elements_per_token,
        "val_loss": final.get("val_loss"),
        "perplexity": final.get("perplexity"),
        "val_bits_per_char": final.get("val_bits_per_char"),
        "val_bits_per_byte": final.get("val_bits_per_byte"),
        "train_loss": final.get("train_loss"),
        "train_tokens_per_s": state.tokens / state.train_time_s if state.train_time_s else 0.0,
        "steps": state.step,
        "tokens": state.tokens,
        "num_processes": run.accelerator.num_processes,
        "sample_prompt": run.args.sample_prompt,
        "sample": None,
        "history": history,
    }


def peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return peak_rss_bytes()


@torch.no_grad()
def generate_sample(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of `prompt`, decoded with the prompt (deterministic, for the report)."""
    was_training = model.training
    model.eval()
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
    if ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.eos_token_id]], device=model.device)
    new_tokens = max(0, min(max_new_tokens, model.config.max_position_embeddings - ids.shape[1]))
    out = ids  # 0 new tokens: the prompt alone (transformers' generate refuses max_new_tokens=0)
    if new_tokens:
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    if was_training:
        model.train()
    return tokenizer.decode(out[0], skip_special_tokens=False)
