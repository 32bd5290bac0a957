"""Is generated Pathfinder learnable? A small CNN on the images, as a check before sequence runs.

A CNN sees the image in 2-D, so it should leave chance on LRA's Pathfinder-32 well before a
sequence model does; if it does not on our images, the generator is the suspect. Generates
(or reads from the cache) ``--train`` + ``--test`` images with every core, trains

    conv3x3(32) x2 -> pool -> conv3x3(64) x2 -> pool -> conv3x3(64) x2 -> global max -> MLP

with Adam (lr 1e-3, batch 128) for ``--minutes`` and prints train loss and test accuracy after
each epoch. Usage (a GPU makes the epochs take seconds)::

    python experiments/pathfinder_cnn.py --difficulty curv_contour_length_14 --minutes 5
"""

import argparse
import time

import flax.linen as nn
import jax
import numpy as np
import optax

from seqzoo.data.pathfinder import DIFFICULTIES, generate_pathfinder


class SmallCNN(nn.Module):
    """(batch, 32, 32, 1) images in [-1, 1] -> (batch, 2) logits."""

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate((32, 32, 64, 64, 64, 64)):
            x = nn.relu(nn.Conv(width, (3, 3))(x))
            if i in (1, 3):
                x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(2)(nn.relu(nn.Dense(64)(x.max(axis=(1, 2)))))


def _images(split, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    pixels = split["inputs"].reshape(-1, resolution, resolution, 1).astype(np.float32)
    return pixels / 127.5 - 1.0, split["targets"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--difficulty", default="curv_contour_length_14", choices=DIFFICULTIES)
    parser.add_argument("--train", type=int, default=160_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.time()
    data = generate_pathfinder(32, args.difficulty, num_train=args.train, num_val=0,
                               num_test=args.test, seed=args.seed)
    print(f"data: {time.time() - start:.0f} s", flush=True)
    x_train, y_train = _images(data["train"], 32)
    x_test, y_test = _images(data["test"], 32)

    model, optimizer = SmallCNN(), optax.adam(1e-3)
    params = model.init(jax.random.key(args.seed), x_train[:1])
    opt_state = optimizer.init(params)

    def loss_fn(params, x, y):
        logits = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def correct(params, x, y):
        return (model.apply(params, x).argmax(-1) == y).sum()

    rng, batch, epoch = np.random.default_rng(args.seed), 128, 0
    start = time.time()
    while time.time() - start < args.minutes * 60:
        order, losses = rng.permutation(len(x_train)), []
        for i in range(0, len(order) - batch + 1, batch):
            rows = order[i:i + batch]
            params, opt_state, loss = train_step(params, opt_state, x_train[rows], y_train[rows])
            losses.append(loss)
        hits = sum(int(correct(params, x_test[i:i + 1000], y_test[i:i + 1000]))
                   for i in range(0, len(x_test), 1000))
        epoch += 1
        print(f"epoch {epoch} ({time.time() - start:.0f} s): train loss "
              f"{float(np.mean(losses)):.4f}, test accuracy {hits / len(x_test):.4f}", flush=True)


if __name__ == "__main__":
    main()
