"""F1 score (scikit-learn's f1_score): the harmonic mean of precision and recall.

Shipped with peft-framework and loaded by path (`evaluate.load(<dir>)`). Same inputs and outputs as the
Hub's `f1` module; `average="macro"` is the unweighted mean of the per-class F1 over the classes that
occur in the references or predictions (or over `labels` when given).
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import f1_score

_DESCRIPTION = "F1 = 2 * (precision * recall) / (precision + recall)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    labels (list of int): classes to include (default: those present in references and predictions).
    pos_label (int): the positive class for average='binary' (default 1).
    average (str): 'binary' (default), 'micro', 'macro', 'weighted' or 'samples'; None gives per-class scores.
    sample_weight (list of float): optional per-example weights.
    zero_division (0, 1 or 'warn'): value for classes with no predicted or true examples (default 0).
Returns:
    f1 (float, or list of float when average is None).
Example:
    >>> f1 = evaluate.load("path/to/metrics/f1")
    >>> f1.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], average="macro")
"""

_CITATION = """
@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython}, author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        labels=None,
        pos_label=1,
        average="binary",
        sample_weight=None,
        zero_division=0,
    ):
        score = f1_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        return {"f1": float(score) if np.ndim(score) == 0 else [float(x) for x in score]}
