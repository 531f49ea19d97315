"""A trained model as an MLflow pyfunc model. :mod:`pipeline.tracking.registry` logs this file ("models from code")
with the checkpoint as the artifact ``checkpoint`` and this package as code; no stage imports it.

    model = mlflow.pyfunc.load_model("models:/yolact@champion")
    detections = model.predict(image)  # image: uint8 numpy [H, W, 3], RGB

The result is a DataFrame with one row per detection, by decreasing score: the box ``x1, y1, x2, y2`` in
the image's pixels, ``score``, ``label`` (0-based), ``class_name``, ``category_id`` and ``mask``, the COCO
RLE counts of the ``[H, W]`` mask: ``pycocotools.mask.decode({"size": [H, W], "counts": mask})``.
"""
import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from pipeline.tracking.registry import OUTPUT_COLUMNS


class YolactModel(PythonModel):
    def load_context(self, context):
        from pipeline.deploy.predict import Predictor

        self.predictor = Predictor.from_checkpoint(context.artifacts["checkpoint"], device="auto")

    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        prediction = self.predictor.predict(np.array(model_input, dtype=np.uint8))  # a writable copy
        records = self.predictor.coco_records(0, prediction)  # RLE masks, in the detections' order
        rows = [{"x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": score, "label": label,
                 "class_name": prediction.class_names[label], "category_id": record["category_id"],
                 "mask": record["segmentation"]["counts"]}
                for (x1, y1, x2, y2), score, label, record in zip(prediction.boxes.tolist(), prediction.scores.tolist(),
                                                                  prediction.labels.tolist(), records)]
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


mlflow.models.set_model(YolactModel())
