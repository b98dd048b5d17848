"""Benchmark: step image builds for the sample notebooks, against a real local registry.

    python bench/bench_images.py

For each sample notebook: the distributions its steps import (transitively) that a small base
image lacks go into one layer, built and pushed to Debian's ``docker-registry`` on 127.0.0.1.
Measured in one run: the layer (files, compressed bytes), the first build and push (the
baseline) and a second build from the unchanged environment, which must give the same digest
and push nothing; the ratio is second/first. Needs docker-registry, skopeo and umoci (see
.ci/run).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from oci_registry import push_base_image, start_registry  # noqa: E402

from kale_py.api import _checked  # noqa: E402
from kale_py.images.build import build_step_image  # noqa: E402
from kale_py.packages import imported_modules  # noqa: E402


def modules_of(path: Path) -> set[str]:
    pipeline = _checked(path)
    blocks = pipeline.blocks
    return imported_modules([*blocks.imports, *blocks.functions,
                             *(c for s in pipeline.steps for c in s.cells)])


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-images-"))
    registry = start_registry(work / "registry")
    try:
        full = ".".join(map(str, sys.version_info[:3]))
        base = push_base_image(registry, work / "base", "bench/base", {}, python=full)
        print(f"{'notebook':<22} {'dists':>5} {'files':>6} {'layer MB':>9} {'first s':>8} "
              f"{'again s':>8} {'ratio':>6}")
        for path in sorted((ROOT / "sample_notebooks").glob("*.ipynb")):
            modules = modules_of(path)
            target = f"{registry.host}/bench/{path.stem.replace('_', '-')}"
            started = time.perf_counter()
            first = build_step_image(modules, target, base, docker_config={},
                                     cache_dir=work / "cache")
            first_s = time.perf_counter() - started
            started = time.perf_counter()
            again = build_step_image(modules, target, base, docker_config={},
                                     cache_dir=work / "cache")
            again_s = time.perf_counter() - started
            assert again.reference == first.reference and again.pushed == ()
            print(f"{path.stem:<22} {len(first.distributions):>5} {first.layer_files:>6} "
                  f"{first.layer_size / 1e6:>9.1f} {first_s:>8.2f} {again_s:>8.2f} "
                  f"{again_s / first_s:>6.2f}")
    finally:
        registry.stop()


if __name__ == "__main__":
    main()
