"""Perplexity, bits per character and bits per byte of a language model, as an `evaluate` metric.

`evaluate.load(path_to_this_file)` reads it from the installed package, with no Hub access (the
hosted `evaluate.load("perplexity")` downloads its script and loads a model by id). Feed it, per
scored unit (a document, a packed block, a batch), the summed negative log-likelihood in nats and
the number of tokens scored; give the size of the text at `compute`:

    metric.add_batch(nll=[...], tokens=[...])
    metric.compute(chars=C, bytes=B)                  # every token of the text was scored
    metric.compute(chars=C, bytes=B, text_tokens=N)   # a sample was scored; the text has N tokens

It returns `val_loss` (mean nats per scored token), `perplexity`, `bits_per_char` and
`bits_per_byte`, with hf_attn's own formulas (`hf_attn.train.evaluation.lm_metrics`).
"""

import datasets
import evaluate

from hf_attn.train.evaluation import lm_metrics

_DESCRIPTION = "Perplexity and bits per character / byte from summed token NLLs (hf_attn)."
_INPUTS = """
Args:
    nll: summed negative log-likelihood, in nats, of each scored unit.
    tokens: tokens scored in each unit.
    chars, bytes: characters and UTF-8 bytes of the whole text (keyword arguments of `compute`).
    text_tokens: tokens of the whole text, if only a sample of it was scored (default: sum of `tokens`).
Returns:
    val_loss, perplexity, bits_per_char, bits_per_byte, scored_tokens.
"""


class LmPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"nll": datasets.Value("float64"), "tokens": datasets.Value("int64")}),
        )

    def _compute(self, nll, tokens, chars=None, bytes=None, text_tokens=None):  # noqa: A002 (the metric's name)
        if chars is None or bytes is None:
            raise ValueError("compute() needs chars= and bytes=, the size of the scored text")
        scored = int(sum(tokens))
        if scored == 0:
            raise ValueError("no tokens were scored")
        stats = {"tokens": scored if text_tokens is None else text_tokens, "chars": chars, "bytes": bytes}
        return {**lm_metrics(sum(nll) / scored, stats), "scored_tokens": scored}
