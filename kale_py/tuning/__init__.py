"""Hyperparameter tuning of a notebook's pipeline parameters.

Locally (``nb2pipe tune``) Optuna suggests parameter values and each trial is a local run: the
steps that do not depend on a tuned parameter come from the run cache after the first trial.
On Kubeflow, the same search becomes a Katib ``Experiment`` (:mod:`kale_py.tuning.katib`).
"""
