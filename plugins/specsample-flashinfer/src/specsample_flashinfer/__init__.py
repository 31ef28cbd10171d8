"""specsample-flashinfer: registers the ``flashinfer`` backend through specsample's plugin hook.

Importing this module never imports FlashInfer (nor torch): the backend class loads inside the
hook and FlashInfer only when the backend first verifies.
"""

from specsample.hookspecs import hookimpl


@hookimpl
def register_backends(register):
    from .backend import FlashInferBackend

    register(FlashInferBackend)
