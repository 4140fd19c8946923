"""Exact match: the fraction of predictions identical to their reference string.

Shipped with peft-framework and loaded by path (`evaluate.load(<dir>)`). Inputs and options follow the
Hub's `exact_match` module. Callers normalise generated text (EOS and surrounding whitespace removed)
before comparing; this module compares the strings as given, after the optional transformations.
"""

import re
import string

import datasets
import evaluate

_DESCRIPTION = (
    "Exact match rate: mean over examples of [prediction == reference] after optional normalisation."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of str): reference texts.
    regexes_to_ignore (list of str): patterns removed from both before comparing.
    ignore_case (bool): compare lower-cased (default False).
    ignore_punctuation (bool): remove ASCII punctuation before comparing (default False).
    ignore_numbers (bool): remove digits before comparing (default False).
Returns:
    exact_match (float): in [0, 1].
Example:
    >>> em = evaluate.load("path/to/metrics/exact_match")
    >>> em.compute(predictions=["Paris", "rome"], references=["Paris", "Rome"])
    {'exact_match': 0.5}
"""


def _normalise(text, regexes_to_ignore, ignore_case, ignore_punctuation, ignore_numbers):
    for pattern in regexes_to_ignore or ():
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(str.maketrans("", "", string.punctuation))
    if ignore_numbers:
        text = text.translate(str.maketrans("", "", string.digits))
    return text


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(
        self,
        predictions,
        references,
        regexes_to_ignore=None,
        ignore_case=False,
        ignore_punctuation=False,
        ignore_numbers=False,
    ):
        if not predictions:
            return {"exact_match": 0.0}
        options = (regexes_to_ignore, ignore_case, ignore_punctuation, ignore_numbers)
        hits = [_normalise(p, *options) == _normalise(r, *options) for p, r in zip(predictions, references)]
        return {"exact_match": sum(hits) / len(hits)}
