"""Load a model version's pyfunc, importing no more than its flavor needs.

Two things the plain ``mlflow.pyfunc.load_model`` call gets wrong for a server:

- **Memory.** MLflow saves scikit-learn models with skops by default, and ``import skops.io``
  lists every scikit-learn estimator (``sklearn.utils.all_estimators``), which imports every
  scikit-learn module, including the array-API shim that imports torch wherever torch is
  installed. A logistic regression's replica then holds torch: hundreds of MB for nothing.
  skops is imported here with torch hidden, so only a model that really runs on torch
  imports it (as it loads).
- **Long texts.** A transformers pipeline called without ``truncation=True`` raises on a
  text longer than the model's positions (a tensor size mismatch, a 500). With
  ``truncate`` (the default, as Hugging Face pipelines do when asked), the pipeline cuts it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

logger = logging.getLogger("ray.serve")

#: The flavor of MLflow's transformers models (pipelines).
TRANSFORMERS_FLAVOR = "transformers"
_SKLEARN_FLAVOR = "sklearn"


class _Hidden(importlib.abc.MetaPathFinder):
    """A finder that makes ``names`` (and their submodules) look not installed."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname.split(".", 1)[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


@contextmanager
def hidden(*names: str) -> Iterator[None]:
    """Within the block, importing any of ``names`` fails as if it were not installed.

    A module already imported stays usable (this only stops new imports). The finder is
    process-wide, so another thread's import of ``names`` fails too for that moment: it is
    used once, in a model server's constructor, before the replica takes requests.
    """
    finder = _Hidden(names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def prepare_flavor(flavors: dict[str, Any]) -> None:
    """Import what a flavor's loader imports, where it would otherwise pull in torch."""
    if _SKLEARN_FLAVOR not in flavors or "torch" in sys.modules:
        return
    if "skops.io" in sys.modules or importlib.util.find_spec("skops") is None:
        return
    with hidden("torch"):
        # What mlflow.sklearn imports to load a skops model (MLflow's dependency, not ours).
        importlib.import_module("skops.io")


def load_pyfunc(local: str, flavors: dict[str, Any], truncate: bool = True) -> Any:
    """``mlflow.pyfunc.load_model`` of the version downloaded to ``local``."""
    import mlflow

    prepare_flavor(flavors)
    model = mlflow.pyfunc.load_model(local)
    if TRANSFORMERS_FLAVOR in flavors and truncate:
        _truncate_in_pipeline(model)
    return model


def _truncate_in_pipeline(model: Any) -> None:
    """Have the transformers pipeline cut a text longer than the model reads.

    MLflow's wrapper calls ``pipeline(texts, **model_config)``, so ``truncation=True`` goes
    there. ``load_model(model_config=...)`` cannot add it: MLflow only overrides keys the
    model was logged with. ``_model_impl`` is the wrapper (MLflow marks the attribute
    ``@developer_stable``); the integration test of long texts fails if this stops working.
    """
    wrapper = model._model_impl
    config = getattr(wrapper, "model_config", None)
    if config is None:
        raise RuntimeError(
            f"{type(wrapper).__name__} has no model_config: cannot turn on truncation "
            "(set truncate: false for this model, or pin the MLflow version)"
        )
    wrapper.model_config = MappingProxyType({**config, "truncation": True})


def choose_device(gpu_ids: list[Any], cuda_available: bool) -> str:
    """Where a replica runs its torch model: the GPU Ray assigned it, if torch sees one."""
    return "cuda" if gpu_ids and cuda_available else "cpu"


def place_on_device(model: Any, gpu_ids: list[Any]) -> str:
    """Move a torch model (sentence-transformers, transformers) onto the replica's GPU.

    Ray sets CUDA_VISIBLE_DEVICES to the replica's share of a device (``num_gpus``, which
    may be a fraction), so "cuda" is that device. Other models stay where they are.
    """
    # A model that runs on torch imported it as it loaded; importing it here for the others
    # (scikit-learn, XGBoost, ...) would cost every such replica hundreds of MB.
    torch = sys.modules.get("torch")
    if torch is None:
        return "cpu"
    device = choose_device(gpu_ids, torch.cuda.is_available())
    if device == "cpu":
        return device
    raw = model.get_raw_model() if hasattr(model, "get_raw_model") else None
    target = getattr(raw, "model", raw)  # a transformers pipeline holds its model
    if target is None or not hasattr(target, "to"):
        return "cpu"
    target.to(device)
    if raw is not None and raw is not target and hasattr(raw, "device"):
        raw.device = torch.device(device)  # the pipeline puts its inputs there
    logger.info("model on %s (GPU ids %s)", device, gpu_ids)
    return device
