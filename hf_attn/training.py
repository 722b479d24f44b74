"""Train an hf_attn model with accelerate: one CPU, many GPUs, or FSDP/DeepSpeed, same code.

Python API (what `scripts/train.py` calls):

    from hf_attn.training import TrainArgs, train
    from hf_attn.data import CorpusSpec
    result = train(TrainArgs(output_dir="runs/mla", attention_type="mla", preset="small",
                             corpus=CorpusSpec(max_chars=200_000), max_steps=300))

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

Data order is a function of (seed, epoch): accelerate's seedable sampler draws each epoch's
permutation from `seed + epoch` and shards it over processes, so a resumed run skips exactly the
micro-batches it already consumed (`skip_first_batches`) and sees what an uninterrupted run sees.
`batch_size` is per process: a step consumes batch_size * grad_accum * num_processes blocks.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_cosine_with_min_lr_schedule_with_warmup

from .configuration_hf_attn import ATTENTION_TYPES, PRESETS, HfAttnConfig
from .data import CorpusSpec, add_data_args, load_text_splits, pack_splits, spec_from_args
from .evaluation import evaluate_loss, lm_metrics
from .modeling_hf_attn import HfAttnForCausalLM
from .report import plot_losses, read_jsonl, write_report

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
RUN_MARKER = "train_args.json"  # a folder holding it is an hf_attn run
# Model overrides: TrainArgs field -> HfAttnConfig field.
MODEL_OVERRIDES = {
    "attention_type": "attention_type",
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "kv_lora_rank": "kv_lora_rank",
    "max_position_embeddings": "max_position_embeddings",
    "tie_word_embeddings": "tie_word_embeddings",
}


@dataclass
class TrainArgs:
    """Everything a run depends on; `scripts/train.py` flags map one to one (underscores -> dashes)."""

    output_dir: str = "runs/hf_attn"
    # model: a preset or a config JSON file, then the overrides that are not None
    preset: str = "small"
    config: str | None = None
    attention_type: str | None = None
    vocab_size: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    kv_lora_rank: int | None = None
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool | None = None
    # data and tokenizer
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    tokenizer: str = "tokenizer"
    train_tokenizer_vocab: int | None = None  # train a fresh BPE of this size on the train split
    block_size: int = 256
    # optimization
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.95
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    max_steps: int | None = None  # None: from max_tokens, else 1000
    max_tokens: int | None = None
    max_time: float | None = None  # seconds since train() began (data, tokenizer included); the schedule is unchanged
    # evaluation, logging, checkpoints
    eval_every: int = 100
    eval_batches: int | None = None  # None: the full validation set if it has <= 100 batches, else 100
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    tracker: str = "tensorboard"
    sample_prompt: str = "The "
    sample_tokens: int = 64
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    push_to_hub: bool = False
    hub_repo_id: str | None = None
    hub_private: bool = False
    hub_revision: str | None = None


# ---------------------------------------------------------------- setup and checks


def prepare_output_dir(args: TrainArgs, is_main: bool) -> None:
    """Refuse an output dir that holds another run, unless --overwrite (delete it) or --resume."""
    out = args.output_dir
    if not os.path.isdir(out) or not os.listdir(out) or args.resume:
        os.makedirs(out, exist_ok=True)
        return
    is_run = os.path.isfile(os.path.join(out, RUN_MARKER))
    if not args.overwrite:
        what = "another training run" if is_run else "files"
        raise FileExistsError(f"output dir {out!r} already holds {what}; pass --overwrite to replace it or --resume")
    if not is_run:
        raise FileExistsError(f"output dir {out!r} is not empty and not an hf_attn run; refusing to delete it")
    if is_main:
        shutil.rmtree(out)
        os.makedirs(out)


def latest_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint folder (temporary folders of an interrupted save are ignored)."""
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return None
    steps = [int(m.group(1)) for name in os.listdir(root) if (m := CHECKPOINT_RE.match(name))]
    return os.path.join(root, f"checkpoint-{max(steps)}") if steps else None


def load_tokenizer(args: TrainArgs, train_texts, accelerator: Accelerator):
    """The tokenizer at `args.tokenizer`, or a fresh BPE trained on the train split (kept on resume)."""
    if args.train_tokenizer_vocab is None:
        if not os.path.isdir(args.tokenizer):
            raise FileNotFoundError(
                f"tokenizer path {args.tokenizer!r} does not exist; give --tokenizer DIR or --train-tokenizer-vocab N"
            )
        return AutoTokenizer.from_pretrained(args.tokenizer)
    saved = os.path.join(args.output_dir, "tokenizer.json")
    with accelerator.main_process_first():
        if os.path.isfile(saved) and (args.resume or not accelerator.is_main_process):
            return AutoTokenizer.from_pretrained(args.output_dir)
        from .tokenization import build_bpe_tokenizer

        tokenizer = build_bpe_tokenizer(train_texts, vocab_size=args.train_tokenizer_vocab, show_progress=False)
        tokenizer.save_pretrained(args.output_dir)
        return tokenizer


def build_config(args: TrainArgs, tokenizer) -> HfAttnConfig:
    """Preset or config file, then overrides; checks the vocabulary and the block size against it."""
    if args.config is not None:
        with open(args.config) as f:
            base = json.load(f)
        for key in ("architectures", "auto_map", "model_type", "transformers_version", "dtype"):
            base.pop(key, None)
    else:
        if args.preset not in PRESETS:
            raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
        base = dict(PRESETS[args.preset])
    overrides = {dst: getattr(args, src) for src, dst in MODEL_OVERRIDES.items() if getattr(args, src) is not None}
    if args.train_tokenizer_vocab is not None and args.vocab_size is None:
        overrides["vocab_size"] = len(tokenizer)  # a fresh tokenizer sizes the embedding
    # The special-token ids are the tokenizer's: the model is trained on what it produces.
    special = {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    config = HfAttnConfig(**{**base, **overrides, **special})
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}; "
            "pass --vocab-size >= the tokenizer size or another tokenizer"
        )
    if args.block_size > config.max_position_embeddings:
        raise ValueError(
            f"--block-size {args.block_size} exceeds the model's max_position_embeddings "
            f"({config.max_position_embeddings}); lower it or pass --max-position-embeddings"
        )
    return config


def make_optimizer(model, args: TrainArgs) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (linear and embedding weights) only, not on norms (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, args.beta2))


def _peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _batch_hash(input_ids: torch.Tensor) -> int:
    return int(hashlib.sha256(input_ids.cpu().numpy().tobytes()).hexdigest()[:12], 16)


def _append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: str, max_step: int) -> None:
    """Drop records past `max_step` (written after the checkpoint a run resumes from)."""
    records = [r for r in read_jsonl(path) if r["step"] <= max_step]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _args_record(args: TrainArgs) -> dict:
    return dataclasses.asdict(args)


def save_checkpoint(accelerator: Accelerator, args: TrainArgs, step: int, state: dict) -> None:
    """`save_state` into checkpoints/tmp-checkpoint-STEP, then rename: a kill mid-save leaves the last one."""
    root = os.path.join(args.output_dir, "checkpoints")
    tmp = os.path.join(root, f"tmp-checkpoint-{step}")
    final = os.path.join(root, f"checkpoint-{step}")
    if accelerator.is_main_process and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)  # every process writes its RNG state; the main one the rest
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(state, f)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        steps = sorted(int(m.group(1)) for n in os.listdir(root) if (m := CHECKPOINT_RE.match(n)))
        for old in steps[: max(0, len(steps) - args.keep_checkpoints)]:
            shutil.rmtree(os.path.join(root, f"checkpoint-{old}"))
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------- the loop


def train(args: TrainArgs) -> dict:
    """Train per `args`, write the run's outputs (see the module docstring) and return its summary."""
    start = time.perf_counter()
    if args.mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {args.mixed_precision!r}")
    if args.tracker not in ("tensorboard", "none"):
        raise ValueError(f"tracker must be 'tensorboard' or 'none', got {args.tracker!r}")
    if args.push_to_hub and not args.hub_repo_id:
        raise ValueError("--push-to-hub needs --hub-repo-id")
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.grad_accum, sync_with_dataloader=False  # steps never end at an epoch's end
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        step_scheduler_with_optimizer=False,  # stepped by hand, once per optimizer step
        log_with=None if args.tracker == "none" else args.tracker,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "tensorboard")
        ),
    )
    is_main = accelerator.is_main_process
    prepare_output_dir(args, is_main)
    accelerator.wait_for_everyone()
    resume_from = latest_checkpoint(args.output_dir) if args.resume else None
    ckpt_root = os.path.join(args.output_dir, "checkpoints")
    if is_main and os.path.isdir(ckpt_root):  # saves cut short by a kill
        for name in os.listdir(ckpt_root):
            if name.startswith("tmp-"):
                shutil.rmtree(os.path.join(ckpt_root, name))

    splits = load_text_splits(args.corpus)
    tokenizer = load_tokenizer(args, splits["train"]["text"], accelerator)
    config = build_config(args, tokenizer)
    data = pack_splits(splits, tokenizer, args.block_size)

    set_seed(args.seed)
    model = HfAttnForCausalLM(config)
    optimizer = make_optimizer(model, args)
    world = accelerator.num_processes
    tokens_per_step = args.batch_size * args.grad_accum * world * args.block_size
    max_steps = args.max_steps if args.max_steps is not None or args.max_tokens is not None else 1000
    if args.max_tokens is not None:
        by_tokens = math.ceil(args.max_tokens / tokens_per_step)
        max_steps = by_tokens if max_steps is None else min(max_steps, by_tokens)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, min(args.warmup_steps, max_steps), max_steps, min_lr_rate=args.min_lr_ratio
    )
    train_loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(data.validation, batch_size=args.batch_size, shuffle=False)
    model, optimizer, scheduler, train_loader, val_loader = accelerator.prepare(
        model, optimizer, scheduler, train_loader, val_loader
    )
    if len(train_loader) == 0:
        raise ValueError(
            f"the train split has {len(data.train)} blocks: fewer than one batch of {args.batch_size} per process"
        )
    eval_batches = args.eval_batches
    if eval_batches is None:
        eval_batches = len(val_loader) if len(val_loader) <= 100 else 100

    metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
    log_path = os.path.join(args.output_dir, "train_log.jsonl")
    step, tokens, train_time = 0, 0, 0.0
    # Per-step losses and time since the last log / evaluation: checkpointed, so that a resumed run
    # logs the same interval means as an uninterrupted one.
    intervals = {"log": {"losses": [], "time": 0.0}, "eval": {"losses": [], "time": 0.0}}
    if resume_from is not None:
        accelerator.load_state(resume_from)
        with open(os.path.join(resume_from, "trainer_state.json")) as f:
            state = json.load(f)
        step, tokens, train_time = state["step"], state["tokens"], state["train_time_s"]
        intervals = state["intervals"]
        if is_main:
            for path in (metrics_path, log_path):
                _truncate_jsonl(path, step)
            print(f"resuming from {resume_from} (step {step})", file=sys.stderr)
    elif is_main:
        for path in (metrics_path, log_path):
            if os.path.exists(path):
                os.remove(path)
    if is_main:
        with open(os.path.join(args.output_dir, RUN_MARKER), "w") as f:
            json.dump(_args_record(args), f, indent=2, default=str)
    if args.tracker != "none":
        accelerator.init_trackers(
            "hf_attn", config={k: v for k, v in _args_record(args).items() if isinstance(v, (int, float, str, bool))}
        )

    def micro_batches(consumed: int):
        """The per-process micro-batch stream, from micro-batch `consumed` on, epoch after epoch."""
        epoch, skip = divmod(consumed, len(train_loader))
        while True:
            train_loader.set_epoch(epoch)
            loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            loader.set_epoch(epoch)
            yield from loader
            epoch, skip = epoch + 1, 0

    def evaluate_now(interval: dict) -> dict:
        mean_loss, _ = evaluate_loss(model, val_loader, accelerator, max_batches=eval_batches)
        m = lm_metrics(mean_loss, data.stats["validation"])
        n = len(interval["losses"])
        return {
            "step": step,
            "tokens": tokens,
            "train_loss": sum(interval["losses"]) / n,
            "val_loss": m["val_loss"],
            "perplexity": m["perplexity"],
            "val_bits_per_char": m["bits_per_char"],
            "val_bits_per_byte": m["bits_per_byte"],
            "lr": scheduler.get_last_lr()[0],
            "elapsed_s": train_time,
            "step_time_s": interval["time"] / n,
        }

    stream = micro_batches(step * args.grad_accum)
    progress = tqdm(total=max_steps, initial=step, disable=not (is_main and args.progress), desc="train")
    first_hash_logged = resume_from is not None
    model.train()
    while step < max_steps:
        step_start = time.perf_counter()
        step_loss = torch.zeros((), device=accelerator.device)
        for _ in range(args.grad_accum):
            input_ids = next(stream)["input_ids"]
            if not first_hash_logged:
                hashes = accelerator.gather(torch.tensor([_batch_hash(input_ids)], device=accelerator.device))
                if is_main:
                    info = {"num_processes": world, "first_batch_hashes": hashes.tolist()}
                    with open(os.path.join(args.output_dir, "run_info.json"), "w") as f:
                        json.dump(info, f)
                first_hash_logged = True
            with accelerator.accumulate(model):
                loss = model(input_ids=input_ids, labels=input_ids).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            step_loss += loss.detach()
        scheduler.step()
        step += 1
        tokens += tokens_per_step
        elapsed = time.perf_counter() - step_start
        train_time += elapsed
        # mean over the step's micro-batches and processes (one scalar all-reduce)
        loss_value = accelerator.reduce(step_loss, "mean").item() / args.grad_accum
        for interval in intervals.values():
            interval["losses"].append(loss_value)
            interval["time"] += elapsed
        progress.update(1)

        out_of_time = args.max_time is not None and time.perf_counter() - start >= args.max_time
        if world > 1 and args.max_time is not None:  # every process must stop at the same step
            out_of_time = accelerator.reduce(torch.tensor(float(out_of_time), device=accelerator.device)).item() > 0
        last = step >= max_steps or out_of_time

        if step % args.log_every == 0 or last:
            log = intervals["log"]
            log_steps = len(log["losses"])
            log_loss = sum(log["losses"]) / log_steps
            record = {
                "step": step,
                "tokens": tokens,
                "train_loss": log_loss,
                "lr": scheduler.get_last_lr()[0],
                "step_time_s": log["time"] / log_steps,
                "elapsed_s": train_time,
            }
            tok_s = tokens_per_step * log_steps / log["time"]
            progress.set_postfix(loss=f"{log_loss:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{tok_s:.0f}")
            accelerator.log({"train/loss": log_loss, "train/lr": record["lr"], "train/step_time_s": record["step_time_s"]}, step=step)
            if is_main:
                _append_jsonl(log_path, record)
            intervals["log"] = {"losses": [], "time": 0.0}
        if step % args.eval_every == 0 or last:
            record = evaluate_now(intervals["eval"])
            accelerator.log({f"eval/{k}": v for k, v in record.items() if k not in ("step", "tokens")}, step=step)
            if is_main:
                _append_jsonl(metrics_path, record)
                progress.write(
                    f"step {step}: train {record['train_loss']:.4f} val {record['val_loss']:.4f} "
                    f"bpc {record['val_bits_per_char']:.4f}"
                )
            intervals["eval"] = {"losses": [], "time": 0.0}
        if args.save_every and step % args.save_every == 0 and not last:
            state = {"step": step, "tokens": tokens, "train_time_s": train_time, "intervals": intervals}
            save_checkpoint(accelerator, args, step, state)
        if out_of_time:
            break
    progress.close()
    accelerator.wait_for_everyone()
    return _finish(args, accelerator, model, tokenizer, config, step, tokens, train_time, start)


def _finish(args, accelerator, model, tokenizer, config, step, tokens, train_time, start) -> dict:
    """Save the final model and tokenizer, generate the sample, write report.md and loss.png."""
    unwrapped = accelerator.unwrap_model(model)
    history = read_jsonl(os.path.join(args.output_dir, "metrics.jsonl")) if accelerator.is_main_process else []
    final = history[-1] if history else {}
    summary = {
        "model_dir": args.output_dir,
        "params": unwrapped.num_parameters(),
        "kv_cache_elements_per_token": config.kv_cache_elements_per_token,
        "kv_cache_bytes_per_token": 2 * config.kv_cache_elements_per_token,
        "val_loss": final.get("val_loss"),
        "perplexity": final.get("perplexity"),
        "val_bits_per_char": final.get("val_bits_per_char"),
        "val_bits_per_byte": final.get("val_bits_per_byte"),
        "train_loss": final.get("train_loss"),
        "train_tokens_per_s": tokens / train_time if train_time else 0.0,
        "steps": step,
        "tokens": tokens,
        "num_processes": accelerator.num_processes,
        "sample_prompt": args.sample_prompt,
        "history": history,
    }
    if accelerator.is_main_process:
        unwrapped.save_pretrained(args.output_dir, state_dict=accelerator.get_state_dict(model), safe_serialization=True)
        tokenizer.save_pretrained(args.output_dir)
        summary["sample"] = generate_sample(unwrapped, tokenizer, args.sample_prompt, args.sample_tokens)
        plot_losses(
            os.path.join(args.output_dir, "loss.png"), history, read_jsonl(os.path.join(args.output_dir, "train_log.jsonl"))
        )
    else:
        accelerator.get_state_dict(model)  # a collective under FSDP/DeepSpeed: every process takes part
        summary["sample"] = None
    summary["peak_memory_bytes"] = _peak_memory_bytes()
    summary["wall_s"] = time.perf_counter() - start
    if accelerator.is_main_process:
        write_report(
            os.path.join(args.output_dir, "report.md"), summary, config.to_dict(), _args_record(args), summary["sample"]
        )
        if args.push_to_hub:
            from .hub import push_to_hub  # written separately; only needed here

            push_to_hub(args.output_dir, args.hub_repo_id, private=args.hub_private, revision=args.hub_revision)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # also tears down the process group
    return summary


@torch.no_grad()
def generate_sample(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of `prompt`, decoded with the prompt (deterministic, for the report)."""
    was_training = model.training
    model.eval()
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
    if ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.eos_token_id]], device=model.device)
    room = model.config.max_position_embeddings - ids.shape[1]
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max(0, min(max_new_tokens, room)),
        do_sample=False, pad_token_id=tokenizer.pad_token_id,
    )
    if was_training:
        model.train()
    return tokenizer.decode(out[0], skip_special_tokens=False)


# ---------------------------------------------------------------- command line


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """The flags of `scripts/train.py`: every TrainArgs field, plus the data flags of `add_data_args`."""
    d = TrainArgs()
    m = parser.add_argument_group("model")
    m.add_argument("--preset", default=d.preset, choices=sorted(PRESETS))
    m.add_argument("--config", default=None, help="a config.json to start from instead of the preset")
    m.add_argument("--attention-type", default=None, choices=ATTENTION_TYPES, help="default: the preset's (mha)")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "kv_lora_rank", "max_position_embeddings"):
        m.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    m.add_argument("--tie-word-embeddings", action=argparse.BooleanOptionalAction, default=None)
    t = parser.add_argument_group("tokenizer")
    t.add_argument("--tokenizer", default=d.tokenizer, help="tokenizer folder (AutoTokenizer)")
    t.add_argument("--train-tokenizer-vocab", type=int, default=None,
                   help="train a fresh byte-level BPE of this vocab size on the train split instead")
    o = parser.add_argument_group("optimization")
    o.add_argument("--block-size", type=int, default=d.block_size)
    o.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    o.add_argument("--grad-accum", type=int, default=d.grad_accum)
    o.add_argument("--lr", type=float, default=d.lr)
    o.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="cosine decays to lr * this")
    o.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    o.add_argument("--weight-decay", type=float, default=d.weight_decay)
    o.add_argument("--beta2", type=float, default=d.beta2)
    o.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    o.add_argument("--mixed-precision", default=d.mixed_precision, choices=("no", "bf16", "fp16"))
    o.add_argument("--max-steps", type=int, default=None, help="default: from --max-tokens, else 1000")
    o.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens (sizes the schedule)")
    o.add_argument("--max-time", type=float, default=None, help="stop after this many seconds from the start of training setup (schedule unchanged)")
    r = parser.add_argument_group("run")
    r.add_argument("--output-dir", default=d.output_dir)
    r.add_argument("--eval-every", type=int, default=d.eval_every)
    r.add_argument("--eval-batches", type=int, default=None, help="default: all if <= 100 batches, else 100")
    r.add_argument("--log-every", type=int, default=d.log_every)
    r.add_argument("--save-every", type=int, default=d.save_every, help="0: no checkpoints")
    r.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    r.add_argument("--tracker", default=d.tracker, choices=("tensorboard", "none"))
    r.add_argument("--sample-prompt", default=d.sample_prompt)
    r.add_argument("--sample-tokens", type=int, default=d.sample_tokens)
    r.add_argument("--seed", type=int, default=d.seed)
    r.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    r.add_argument("--overwrite", action="store_true", help="replace a previous run in --output-dir")
    r.add_argument("--no-progress", dest="progress", action="store_false")
    h = parser.add_argument_group("hub")
    h.add_argument("--push-to-hub", action="store_true")
    h.add_argument("--hub-repo-id", default=None)
    h.add_argument("--hub-private", action="store_true")
    h.add_argument("--hub-revision", default=None)
    add_data_args(parser)


def train_args_from_namespace(ns: argparse.Namespace) -> TrainArgs:
    """TrainArgs of parsed `add_train_args` flags."""
    names = {f.name for f in dataclasses.fields(TrainArgs)} - {"corpus"}
    return TrainArgs(**{n: getattr(ns, n) for n in names}, corpus=spec_from_args(ns))
