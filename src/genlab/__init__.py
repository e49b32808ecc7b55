"""genlab: train, evaluate and compare VAEs and GANs for image generation.

    genlab.train(model, data, ...)   train a preset or model        -> TrainResult
    genlab.resume(run_dir)           continue a stopped run
    genlab.load(run_dir)             the trained model; model.sample(n) -> images in [0, 1]
"""
__version__ = "0.1.0"

__all__ = ["__version__", "train", "resume", "load", "TrainResult"]


def __getattr__(name):  # import the API lazily: `import genlab.models.losses` stays light
    if name in ("train", "resume", "load", "TrainResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'genlab' has no attribute {name!r}")
