"""Options that change how fast a run trains, not what it computes: torch.compile, channels-last.

``--compile`` compiles the forward pass of each network of the model in place: the module
objects, their parameters and so the checkpoint's state_dict keys stay as they are (no
``_orig_mod.`` prefix), and a run trained compiled loads, samples and resumes without it.
Compilation happens on the first call; the Trainer times the first step apart
(``compile_warmup`` in metrics.jsonl) and leaves it out of img/s. The model's Python
``train_step`` (several optimizers, frozen discriminators, penalties) stays eager.

``--channels-last`` stores the 4-d weights and the batches of a convolutional model in NHWC
order, which some convolution kernels prefer (on GPUs with tensor cores; on CPU it may not pay:
measure with bench/speed.py). Numbers change only by float rounding.
"""
from __future__ import annotations

import os
import shutil

import torch
from torch import nn

from ..errors import GenlabError


def uses_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def check_compile(device: torch.device) -> None:
    """A clear error, before training starts, where torch.compile cannot work."""
    try:
        import torch._dynamo
    except ImportError as e:  # pragma: no cover - depends on the platform
        raise GenlabError(f"--compile: torch.compile is not available here ({e}); train without --compile.") from None
    if not torch._dynamo.is_dynamo_supported():
        raise GenlabError("--compile: torch.compile does not support this Python/platform; train without --compile.")
    if device.type == "cpu":
        from torch._inductor import config as inductor_config

        cxx = os.environ.get("CXX") or inductor_config.cpp.cxx[-1] or "g++"
        if shutil.which(cxx) is None and shutil.which("g++") is None and shutil.which("clang++") is None:
            raise GenlabError("--compile on CPU needs a C++ compiler (torch's inductor generates C++): install g++ "
                              "(`apt-get install g++`) or train without --compile.")


def compile_networks(model: nn.Module) -> list[str]:
    """Compile the ``forward`` of each direct sub-network of ``model`` that has trainable parameters
    (an EMA copy or a fitted prior stays eager), in place. Returns their names.

    ``child.forward = torch.compile(child.forward)``, not ``torch.compile(child)`` (whose wrapper
    would add ``_orig_mod.`` to every state_dict key) nor ``child.compile()`` (which compiles
    ``Module._call_impl``, a frame torch 2.13's dynamo leaves uncompiled)."""
    names = []
    for name, child in model.named_children():
        if any(p.requires_grad for p in child.parameters()):
            # static shapes: a batch size of its own (an epoch's last batch, evaluation) compiles once
            # more, instead of turning every step's kernels into slower dynamic-shape ones
            child.forward = torch.compile(child.forward, dynamic=False)
            names.append(name)
    # dynamo keeps the compiled variants of all these forwards in one cache (one wrapper function):
    # per network, training and evaluation, with and without gradients, frozen or not, a new batch size
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 16 * len(names))
    return names


def is_compile_error(e: BaseException) -> bool:
    """True for a failure of torch.compile itself (a backend or its C++ toolchain), not of the model."""
    try:
        from torch._dynamo.exc import BackendCompilerFailed
    except ImportError:  # pragma: no cover
        return False
    kinds: tuple[type, ...] = (BackendCompilerFailed,)
    try:
        from torch._inductor.exc import InductorError
        kinds += (InductorError,)
    except ImportError:  # pragma: no cover - older torch
        pass
    try:
        from torch._inductor.exc import CppCompileError
        kinds += (CppCompileError,)
    except ImportError:  # pragma: no cover
        pass
    return isinstance(e, kinds)


def match_optimizer_layout(optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Give every optimizer state tensor its parameter's memory layout (checkpoints store them
    contiguous; a channels-last parameter wants channels-last moments)."""
    for opt in optimizers.values():
        for p, state in opt.state.items():
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
