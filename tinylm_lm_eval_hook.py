"""Lets lm-evaluation-harness's own `lm_eval --model tinylm ...` find tinylm's model type.

lm_eval 0.4.13 looks model types up in its own registry and loads no plugin
entry points. `tinylm-lm-eval --install-hook` writes tinylm_lm_eval.pth into
site-packages; Python runs it at every start-up, and it imports this module,
which only waits: once `lm_eval.models` has been imported (lm_eval fills its
registry there), "tinylm" is registered as a lazy "module:class" name, so
tinylm and torch load only in a run that asks for `--model tinylm`.
`tinylm-lm-eval --remove-hook` deletes the .pth. Kept outside the tinylm
package, whose import would load torch into every Python process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

MODEL_TYPE = "tinylm"
ADAPTER = "tinylm.eval.lm_eval_adapter:TinyLMEval"
REGISTRY_FILLER = "lm_eval.models"


def register() -> None:
    from lm_eval.api.registry import model_registry

    if MODEL_TYPE not in model_registry:  # importing the adapter itself registers the class
        model_registry.register(MODEL_TYPE, target=ADAPTER)


class RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds `lm_eval.models` as the other finders would, and registers tinylm once that module has run."""

    def find_spec(self, name: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if name != REGISTRY_FILLER:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *_: None)(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                break
        else:
            return None
        run_module = spec.loader.exec_module

        def exec_module(module) -> None:
            run_module(module)
            register()

        spec.loader.exec_module = exec_module
        return spec


if REGISTRY_FILLER in sys.modules:
    register()
elif not any(isinstance(finder, RegisterAfterImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, RegisterAfterImport())
