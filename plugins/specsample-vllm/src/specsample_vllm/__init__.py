"""specsample-vllm: registers the ``vllm`` backend through specsample's plugin hook.

Importing this module never imports vLLM (nor torch): the backend class loads inside the hook
and vLLM only when the backend first verifies.
"""

from specsample.hookspecs import hookimpl


@hookimpl
def register_backends(register):
    from .backend import VllmBackend

    register(VllmBackend)
