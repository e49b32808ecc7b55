"""Time the trained mixture prior's log-density (prior="mog"), forward and backward, at a batch-128
MLP VAE step's size, against the direct per-pair sum it replaced (an (N, K, D) tensor).

    python bench/mixture_prior.py [--components 100] [--dim 32] [--batch 128]
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from genlab.models.priors import LearnedMixturePrior


def direct(z, prior):
    diff = z[:, None, :] - prior.means[None]
    comp = -0.5 * (diff.pow(2) / prior.logvars.exp() + prior.logvars + math.log(2 * math.pi)).sum(-1)
    return torch.logsumexp(comp + torch.log_softmax(prior.logits, 0), dim=1)


def ms_per_call(fn, repeats: int = 200) -> float:
    for _ in range(20):
        fn().sum().backward()
    t = time.perf_counter()
    for _ in range(repeats):
        fn().sum().backward()
    return (time.perf_counter() - t) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--components", type=int, default=100)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    prior = LearnedMixturePrior(args.dim, args.components)
    z = torch.randn(args.batch, args.dim, requires_grad=True)
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {args.components} components, dim {args.dim}")
    print(f"direct (N, K, D) sum : {ms_per_call(lambda: direct(z, prior)):.3f} ms forward+backward")
    print(f"genlab log_prob      : {ms_per_call(lambda: prior.log_prob(z)):.3f} ms forward+backward")


if __name__ == "__main__":
    main()
