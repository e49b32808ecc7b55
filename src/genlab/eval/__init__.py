"""Offline evaluation of genlab models.

Sample metrics (FID, KID, classifier IS, precision/recall/density/coverage, class coverage,
memorisation) are computed in the feature space of a small CNN classifier trained on the dataset
itself (the *evaluator*), not Inception: numbers are comparable only between results with the
same evaluator fingerprint, which every result records in its ``protocol`` block.

    get_evaluator(dataset)                       cached (or newly trained) Evaluator
    evaluate_images(samples, dataset, evaluator) -> {"protocol": ..., "metrics": ...}
    calibrate(dataset, evaluator)                -> rows for real / noise / blur / half-classes / one image
    vae_likelihood(model, images, k=5000)        ELBO and IWAE NLL (nats/image)
    evaluate_run(run_dir) / evaluate_npz(path, data_spec)
    format_table(result) / format_calibration(rows)
"""
from .evaluator import Evaluator, EvaluatorNet, fingerprint, get_evaluator, train_evaluator
from .likelihood import vae_likelihood
from .metrics import (calibrate, evaluate_images, fid_from_features, frechet_distance, inception_score,
                      kid_from_features, prdc)
from .report import evaluate_npz, evaluate_run, format_calibration, format_table

__all__ = ["Evaluator", "EvaluatorNet", "fingerprint", "get_evaluator", "train_evaluator", "vae_likelihood",
           "calibrate", "evaluate_images", "fid_from_features", "frechet_distance", "inception_score",
           "kid_from_features", "prdc", "evaluate_npz", "evaluate_run", "format_calibration", "format_table"]
