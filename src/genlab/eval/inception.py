"""FID/KID in Inception-v3 features, for users who have the weights on disk.

genlab never downloads weights. torchmetrics' Inception feature extractor (from torch-fidelity)
looks for ``weights-inception-2015-12-05-6726825d.pth`` in torch's hub cache
(``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``); put the file
there to use ``genlab eval --features inception``. For MNIST-like data the evaluator features
(the default) are the better choice: Inception was trained on photographs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import GenlabError

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


def inception_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def check_inception_available() -> Path:
    """The weights' path, or a GenlabError that says what to install and where to put the file."""
    path = inception_weights_path()
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise GenlabError("--features inception needs the torch-fidelity package (`pip install torch-fidelity`) "
                          f"and the Inception weights file {WEIGHTS_FILE} in {path.parent}. genlab never downloads "
                          "them; without them use the default evaluator features.") from None
    if not path.is_file():
        raise GenlabError(f"--features inception: no Inception weights at {path}. Copy {WEIGHTS_FILE} there "
                          "(genlab never downloads weights), or use the default evaluator features.")
    return path


def _rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def inception_fid_kid(samples: Tensor, reference: Tensor, batch_size: int = 200) -> dict[str, Any]:
    """FID and KID of float images in [0, 1] against reference images, in Inception pool features."""
    check_inception_available()
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    fid = FrechetInceptionDistance(feature=2048, normalize=True)
    kid = KernelInceptionDistance(feature=2048, normalize=True, subset_size=min(1000, len(samples), len(reference)))
    for images, real in ((reference, True), (samples, False)):
        for i in range(0, len(images), batch_size):
            x = _rgb(images[i:i + batch_size].float())
            fid.update(x, real=real)
            kid.update(x, real=real)
    kid_mean, kid_std = kid.compute()
    return {"features": "Inception-v3 pool3 (2048-d), torch-fidelity weights", "fid": fid.compute().item(),
            "kid": kid_mean.item(), "kid_std": kid_std.item()}
