"""ROUGE (Lin 2004) with Google's `rouge_score` package: F-measure of n-gram / LCS overlap.

Shipped with peft-framework and loaded by path (`evaluate.load(<dir>)`). Inputs follow the Hub's `rouge`
module; the aggregate is the plain mean of the per-example F-measures (deterministic, no bootstrap).
rouge_score's default tokenizer lower-cases and keeps only [a-z0-9] runs; pass `tokenizer` (a callable
str -> list[str]) for other languages.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE-N / ROUGE-L F-measure between generated and reference texts."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of str): reference texts.
    rouge_types (list of str): any of 'rouge1'..'rouge9', 'rougeL', 'rougeLsum' (default ['rougeL']).
    use_stemmer (bool): Porter-stem words before matching (default False).
    tokenizer (callable): str -> list of tokens; default rouge_score's.
    use_aggregator (bool): mean over examples (default True); False returns per-example lists.
Returns:
    one key per rouge type: float (mean F-measure) or list of float.
Example:
    >>> rouge = evaluate.load("path/to/metrics/rouge")
    >>> rouge.compute(predictions=["the cat sat"], references=["the cat sat down"])
"""

_CITATION = """
@inproceedings{lin-2004-rouge, title={{ROUGE}: A Package for Automatic Evaluation of Summaries},
author={Lin, Chin-Yew}, booktitle={Text Summarization Branches Out}, year={2004}, pages={74--81}}
"""


class _Tokenizer:
    """Adapter for a plain callable, the interface rouge_scorer expects."""

    def __init__(self, fn):
        self.fn = fn

    def tokenize(self, text):
        return self.fn(text)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(
        self,
        predictions,
        references,
        rouge_types=None,
        use_stemmer=False,
        tokenizer=None,
        use_aggregator=True,
    ):
        rouge_types = list(rouge_types or ["rougeL"])
        scorer = rouge_scorer.RougeScorer(
            rouge_types=rouge_types,
            use_stemmer=use_stemmer,
            tokenizer=_Tokenizer(tokenizer) if tokenizer is not None else None,
        )
        per_example = {t: [] for t in rouge_types}
        for prediction, reference in zip(predictions, references):
            scores = scorer.score(reference, prediction)  # (target, prediction)
            for t in rouge_types:
                per_example[t].append(float(scores[t].fmeasure))
        if not use_aggregator:
            return per_example
        return {t: (sum(v) / len(v) if v else 0.0) for t, v in per_example.items()}
