"""Using a trained model outside the pipeline: predictions on image files (:mod:`~pipeline.deploy.predict`,
``Predictor``), ONNX export (:mod:`~pipeline.deploy.export`) and the MLflow pyfunc wrapper of the registered
model (:mod:`~pipeline.deploy.pyfunc_model`, a file :mod:`pipeline.tracking.registry` ships, not imported by a
stage)."""
