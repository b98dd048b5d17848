"""Kubeflow Pipelines backend: compile a pipeline to KFP v2 IR, check it, submit it.

- :mod:`.ir`: :func:`build_ir` turns a :class:`PipelineDef` into PipelineSpec + PlatformSpec
  dicts, :func:`ir_to_yaml` writes them as the KFP compiler does. No ``kfp`` import.
- :mod:`.validate`: :func:`validate_ir` parses the IR strictly with KFP's own protobufs.
- :mod:`.client`: :func:`submit_pipeline` and :func:`list_experiments` talk to a KFP endpoint's
  REST API (v2beta1) with the standard library.
"""
