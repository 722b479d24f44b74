"""transformers' Trainer (and TRL's SFTTrainer) train an hf_attn model with no hf_attn-specific code."""

import datasets
import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hf_attn import HfAttnConfig
from hf_attn.train.data import default_corpus_documents

pytestmark = pytest.mark.usefixtures("single_thread")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Trainer sets accelerate's process-wide state; clear it so later tests (the training loop) start clean."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_model(tokenizer, attention_type: str = "mla"):
    torch.manual_seed(0)
    special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = HfAttnConfig.from_preset("tiny", attention_type=attention_type, vocab_size=len(tokenizer), **special)
    return AutoModelForCausalLM.from_config(config)


def losses(trainer) -> list[float]:
    return [record["loss"] for record in trainer.state.log_history if "loss" in record]


def training_kwargs(tmp_path, **overrides) -> dict:
    """30 CPU steps at a constant learning rate, a loss logged every 5, nothing saved or reported."""
    args = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=3e-3, max_steps=30,
                logging_steps=5, save_strategy="no", report_to=[], use_cpu=True, seed=0, lr_scheduler_type="constant",
                disable_tqdm=True, dataloader_num_workers=0)  # fmt: skip
    return {**args, **overrides}


@pytest.mark.parametrize("attention_type", ["gqa", "mla"])
def test_trainer_with_gradient_checkpointing_lowers_loss_and_round_trips(tmp_path, byte_tokenizer, attention_type):
    text = "".join(default_corpus_documents()[:3])
    lines = [line for line in text.split("\n") if len(line) > 20][:400]
    dataset = datasets.Dataset.from_dict({"text": lines}).map(
        lambda batch: byte_tokenizer(batch["text"], truncation=True, max_length=64), batched=True,
        remove_columns=["text"],
    )  # fmt: skip
    model = tiny_model(byte_tokenizer, attention_type)
    collator = DataCollatorForLanguageModeling(byte_tokenizer, mlm=False)  # labels = input ids, pads -> -100
    args = TrainingArguments(**training_kwargs(tmp_path, gradient_checkpointing=True))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    assert all(layer.gradient_checkpointing for layer in model.model.layers)  # it was on while training
    logged = losses(trainer)
    assert len(logged) == 6 and logged[-1] < 0.7 * logged[0], logged

    trainer.save_model(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", trust_remote_code=True).eval()
    ids = torch.tensor([byte_tokenizer("In the beginning God created")["input_ids"]])
    model.eval()
    with torch.no_grad():
        assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_trl_sft_trainer_on_chat_formatted_text(tmp_path, byte_tokenizer):
    trl = pytest.importorskip("trl")
    tokenizer = byte_tokenizer.__class__(tokenizer_object=byte_tokenizer.backend_tokenizer, eos_token="<|endoftext|>",
                                         pad_token="<|pad|>", chat_template=CHAT_TEMPLATE)  # fmt: skip
    pairs = [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.") for a in range(12) for b in range(12)]
    dataset = datasets.Dataset.from_dict(
        {"messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs]}
    )
    config = trl.SFTConfig(**training_kwargs(tmp_path, max_length=64, bf16=False))  # TRL turns bf16 on by default
    model = tiny_model(tokenizer)
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    first = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert first.startswith("<|user|>What is 0 plus 0?<|endoftext|><|assistant|>0 plus 0 is 0.")  # the template ran
    trainer.train()
    logged = losses(trainer)
    assert logged[-1] < 0.6 * logged[0], logged
