"""A notebook's model behind KServe's ``Model`` interface (Open Inference Protocol, V2).

The request's inputs become the model's input: one input is the feature matrix; several
are columns, in order. An estimator fitted on a DataFrame gets a DataFrame with its own
column names, as in the notebook. The response has one output, ``predict``, with the
model's predictions (KServe's own scikit-learn server answers the same way).
"""

from __future__ import annotations

import uuid
from typing import Any


def model_class() -> type:
    """The KServe model class (built on first use: kserve is imported only here)."""
    import kserve
    import numpy as np
    from kserve import InferOutput, InferRequest, InferResponse

    class NotebookModel(kserve.Model):  # type: ignore[misc]
        def __init__(self, name: str, model: Any):
            super().__init__(name)
            self.model = model
            self.ready = False

        def load(self) -> bool:
            self.ready = True
            return self.ready

        def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                    response_headers: dict[str, str] | None = None) -> InferResponse:
            arrays = [i.as_numpy() for i in payload.inputs]
            features = arrays[0] if len(arrays) == 1 else np.column_stack(arrays)
            predictions = np.asarray(self.model.predict(model_input(self.model, features)))
            output = InferOutput(name="predict", shape=list(predictions.shape),
                                 datatype=datatype(predictions))
            output.set_data_from_numpy(predictions, binary_data=False)
            # V2: the request's id if it has one (the response needs one either way)
            return InferResponse(model_name=self.name, infer_outputs=[output],
                                 response_id=payload.id or str(uuid.uuid4()))

    return NotebookModel


def model_input(model: Any, features: Any) -> Any:
    """``features`` as the model was fitted: a DataFrame with its column names if it knew
    them (scikit-learn's ``feature_names_in_``), else the array."""
    names = getattr(model, "feature_names_in_", None)
    if names is not None and getattr(features, "ndim", 0) == 2 and features.shape[1] == len(
            names):
        import pandas as pd  # type: ignore[import-untyped]

        return pd.DataFrame(features, columns=list(names))
    return features


def datatype(array: Any) -> str:
    """The V2 datatype of a numpy array."""
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return f"{'INT' if kind == 'i' else 'UINT'}{size * 8}"
    if kind == "f":
        return f"FP{size * 8}"
    return "BYTES"
