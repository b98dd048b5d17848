"""Serving a notebook's model: the variable tagged ``serve:VAR``, over the Open Inference
Protocol (V2), with KServe's model server. Imported only by ``nb2pipe serve`` (``serve`` extra).
"""
