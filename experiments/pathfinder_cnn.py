"""Is generated Pathfinder learnable? A CNN on the images, as a check before sequence runs.

A CNN sees the image in 2-D, so it should leave chance on LRA's Pathfinder-32 well before a
sequence model does; if it does not on our images, the generator is the suspect. Generates
(or reads from the cache) ``--train`` + ``--test`` images with every core, trains one of

    small   conv3x3(32) x2 -> pool -> conv3x3(64) x2 -> pool -> conv3x3(64) x2 -> global max
            -> MLP (stayed at chance on 160k contour-14 images, 2026-12-05)
    resnet  ResNet-18 as for CIFAR (He et al. 2016): conv3x3(w), then four stages of two basic
            blocks (conv3x3, batch norm, relu, conv3x3, batch norm, + shortcut) of widths
            w, 2w, 4w, 8w, strides 1, 2, 2, 2, global average pool, linear (w = ``--width``,
            64 for 11.2M parameters). Deep CNNs with residual connections learn Pathfinder's
            long contours where shallow ones stay at chance (Linsley et al. 2018, Kim et al.
            2020)

with Adam (lr 1e-3, batch 128) for ``--minutes`` and prints train loss and test accuracy after
each epoch. Usage (a GPU makes the epochs take seconds)::

    python experiments/pathfinder_cnn.py --difficulty curv_contour_length_14 --minutes 5
    python experiments/pathfinder_cnn.py --model resnet --minutes 5
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
    def __call__(self, x, train: bool = False):  # no batch norm: train changes nothing
        for i, width in enumerate((32, 32, 64, 64, 64, 64)):
            x = nn.relu(nn.Conv(width, (3, 3))(x))
            if i in (1, 3):
                x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(2)(nn.relu(nn.Dense(64)(x.max(axis=(1, 2)))))


def _batch_norm(train: bool):
    """Batch norm over the batch while training, its running averages otherwise."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9)


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), the shortcut a strided 1x1 conv with
    batch norm where the shape changes."""

    width: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool):
        strides = (self.stride, self.stride)
        y = nn.relu(_batch_norm(train)(nn.Conv(self.width, (3, 3), strides, use_bias=False)(x)))
        y = _batch_norm(train)(nn.Conv(self.width, (3, 3), use_bias=False)(y))
        if x.shape[-1] != self.width or self.stride != 1:
            x = _batch_norm(train)(nn.Conv(self.width, (1, 1), strides, use_bias=False)(x))
        return nn.relu(y + x)


class ResNet18(nn.Module):
    """(batch, 32, 32, 1) images in [-1, 1] -> (batch, 2) logits (see the module docstring)."""

    width: int = 64

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(_batch_norm(train)(nn.Conv(self.width, (3, 3), use_bias=False)(x)))
        for stage, stride in enumerate((1, 2, 2, 2)):
            for block in range(2):
                x = BasicBlock(self.width * 2**stage, stride if block == 0 else 1)(x, train)
        return nn.Dense(2)(x.mean(axis=(1, 2)))


def _images(split, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    pixels = split["inputs"].reshape(-1, resolution, resolution, 1).astype(np.float32)
    return pixels / 127.5 - 1.0, split["targets"]


MODELS = {"small": lambda width: SmallCNN(), "resnet": lambda width: ResNet18(width)}


def main(argv: list[str] | None = None) -> list[tuple[float, float]]:
    """Trains for ``--minutes`` (at least one epoch, at most ``--epochs``) and returns the
    mean train loss and the test accuracy of each epoch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--difficulty", default="curv_contour_length_14", choices=DIFFICULTIES)
    parser.add_argument("--model", default="small", choices=MODELS)
    parser.add_argument("--width", type=int, default=64, help="resnet's first width (64)")
    parser.add_argument("--train", type=int, default=160_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--epochs", type=int, default=0, help="at most this many (0: no limit)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.time()
    data = generate_pathfinder(32, args.difficulty, num_train=args.train, num_val=0,
                               num_test=args.test, seed=args.seed)
    print(f"data: {time.time() - start:.0f} s", flush=True)
    x_train, y_train = _images(data["train"], 32)
    x_test, y_test = _images(data["test"], 32)

    model, optimizer = MODELS[args.model](args.width), optax.adam(1e-3)
    variables = model.init(jax.random.key(args.seed), x_train[:1], train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})
    print(f"{args.model}: {sum(a.size for a in jax.tree_util.tree_leaves(params)):,} "
          f"parameters", flush=True)
    opt_state = optimizer.init(params)

    def loss_fn(params, stats, x, y):
        logits, updated = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updated.get("batch_stats", {})

    @jax.jit
    def train_step(params, stats, opt_state, x, y):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    @jax.jit
    def correct(params, stats, x, y):
        logits = model.apply({"params": params, "batch_stats": stats}, x, train=False)
        return (logits.argmax(-1) == y).sum()

    rng, batch, epochs = np.random.default_rng(args.seed), min(128, len(x_train)), []
    start = time.time()
    while not epochs or (time.time() - start < args.minutes * 60
                         and len(epochs) != args.epochs):
        order, losses = rng.permutation(len(x_train)), []
        for i in range(0, len(order) - batch + 1, batch):
            rows = order[i:i + batch]
            params, stats, opt_state, loss = train_step(params, stats, opt_state,
                                                        x_train[rows], y_train[rows])
            losses.append(loss)
        hits = sum(int(correct(params, stats, x_test[i:i + 1000], y_test[i:i + 1000]))
                   for i in range(0, len(x_test), 1000))
        epochs.append((float(np.mean(losses)), hits / len(x_test)))
        print(f"epoch {len(epochs)} ({time.time() - start:.0f} s): train loss "
              f"{epochs[-1][0]:.4f}, test accuracy {epochs[-1][1]:.4f}", flush=True)
    return epochs


if __name__ == "__main__":
    main()
