"""Token-weighted language-model loss and perplexity from per-example negative log-likelihoods.

Shipped with peft-framework and loaded by path (`evaluate.load(<dir>)`). Unlike the Hub's `perplexity`
module (which loads a model by name), this one aggregates numbers the caller computed with its own
model: for each example the summed NLL (natural log) over its scored tokens and the number of those
tokens. loss = sum(nll) / sum(num_tokens); perplexity = exp(loss). Every scored token weighs the same,
so long examples count more than short ones (the usual corpus-level perplexity).
"""

import math

import datasets
import evaluate

_DESCRIPTION = "Corpus perplexity exp(sum NLL / sum tokens) from per-example summed NLL and token counts."

_KWARGS_DESCRIPTION = """
Args:
    nll (list of float): per example, the summed negative log-likelihood (nats) of its scored tokens.
    num_tokens (list of int): per example, the number of scored tokens (> 0 in total).
Returns:
    loss (float): mean NLL per token; perplexity (float): exp(loss); num_tokens (int): total scored tokens.
Example:
    >>> ppl = evaluate.load("path/to/metrics/perplexity")
    >>> ppl.compute(nll=[2.0, 1.0], num_tokens=[2, 1])
    {'loss': 1.0, 'perplexity': 2.718281828459045, 'num_tokens': 3}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"nll": datasets.Value("float64"), "num_tokens": datasets.Value("int64")}
            ),
        )

    def _compute(self, nll, num_tokens):
        total = int(sum(num_tokens))
        if total <= 0:
            raise ValueError("perplexity: no scored tokens (sum of num_tokens is 0)")
        loss = float(sum(nll)) / total
        return {
            "loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else float("inf"),
            "num_tokens": total,
        }
