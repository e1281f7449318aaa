"""Classification served without torch: the predictor, the ``/v1`` request and the v2 tensors."""

import numpy as np

from deploy import signatures as names
from deploy.open_inference import Output, Tensors, values_of
from deploy.runtime import Predictor, sub_batches
from deploy.serving import TaskAPI, TextsRequest

# Padded tokens (texts x tokens) per onnxruntime call, so that one long text neither pads the others
# nor multiplies a call's memory (docs/security.md has what a call costs).
TOKENS = 4096


class ClassifierPredictor(Predictor):
    needs_labels = True

    def logits(self, texts: list[str], budget: int = TOKENS) -> np.ndarray:
        """``(B, classes)``, in calls of at most ``budget`` padded tokens (a longer text runs alone)."""
        ids, lengths = self.encode(texts)
        logits = [None] * len(texts)
        for rows in sub_batches([(int(n),) for n in lengths], budget):
            feed = dict(zip(names.CLASSIFIER_INPUTS, (ids[rows, : lengths[rows].max()], lengths[rows]), strict=True))
            (batch_logits,) = self.sessions["model.onnx"].run(names.CLASSIFIER_OUTPUTS, feed)
            for row, values in zip(rows, batch_logits, strict=True):
                logits[row] = values
        return np.stack(logits)

    def classify(self, texts: list[str], budget: int = TOKENS) -> list[dict]:
        """``[{"text", "label", "probability", "probabilities"}]`` per text
        (``zoo.common.predict.classification.Classification``)."""
        return self.predict(texts, budget=budget)


API = TaskAPI(TextsRequest, "texts")
TENSORS = Tensors(
    "text",
    "BYTES",
    {
        "label": Output("BYTES", values_of("label")),
        "probabilities": Output(
            "FP32",
            lambda records: [list(record["probabilities"].values()) for record in records],
            lambda predictor: [-1, len(predictor.labels)],
        ),
    },
)
