"""Step images: the base image plus one layer holding the distributions the steps import.

Built without a container engine and pushed over the OCI distribution API:

* :mod:`.distributions` — which installed distributions the steps need (imports, transitively);
* :mod:`.base` — what the base image already has (its labels, else its layers' file lists);
* :mod:`.layer` — the reproducible layer;
* :mod:`.registry` — the distribution API client;
* :mod:`.credentials` — Docker's config, credential helpers and Kubernetes pull secrets;
* :mod:`.build` — putting it together (:func:`~.build.build_step_image`).
"""
