"""What layers produce during forward passes: the one forward-hook helper of the package.

:func:`layer_outputs` records, per named layer, what ``keep(inputs, output)`` returns on each
call (or on the first call only) while the block runs; with ``stop_when_complete`` a forward pass
ends as soon as every layer has been recorded once (:func:`forward_until_captured`), so that a
detector that needs early layers does not pay for the rest of the network. With
``copy_output`` the model goes on with a copy of each recorded output: an in-place operation
downstream (``ReLU(inplace=True)``, ``out += shortcut``) then changes the copy, and the recorded
tensor stays the layer's output, in the autograd graph, so that a gradient taken with respect to
it is the gradient with respect to what the layer produced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from torch import Tensor, nn

__all__ = ["forward_until_captured", "layer_outputs"]

Keep = Callable[[tuple, Any], Any]


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once every layer has been recorded."""


def _output(_inputs: tuple, output: Any) -> Any:
    return output


@contextmanager
def layer_outputs(
    model: nn.Module,
    layers: Mapping[str, str | nn.Module],
    keep: Keep = _output,
    *,
    first_only: bool = False,
    stop_when_complete: bool = False,
    copy_output: bool = False,
) -> Iterator[dict[str, list]]:
    """Inside the block, ``captured[name]`` lists ``keep(inputs, output)`` of each call of layer
    ``layers[name]`` (a submodule of ``model`` or its path); ``first_only``: of its first call;
    ``copy_output``: the model continues with a copy of each (tensor) output (module docstring).
    Clear the lists between passes where they should not accumulate."""
    captured: dict[str, list] = {name: [] for name in layers}

    def hook_for(name: str):
        def record(_module: nn.Module, inputs: tuple, output: Any) -> Any:
            if not (first_only and captured[name]):
                captured[name].append(keep(inputs, output))
            if stop_when_complete and all(captured.values()):
                raise _StopForward
            return output.clone() if copy_output and isinstance(output, Tensor) else None

        return record

    modules = {
        name: model.get_submodule(layer) if isinstance(layer, str) else layer
        for name, layer in layers.items()
    }
    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def forward_until_captured(model: nn.Module, *args: Any) -> None:
    """``model(*args)`` inside :func:`layer_outputs` with ``stop_when_complete``: the pass
    ends once every layer has been recorded."""
    with suppress(_StopForward):
        model(*args)
