"""Draw the README's overview picture: a test image noised by the forward process, and samples of
the shipped DDPM (``jdm.viz.overview_figure``).

    python tools/overview_figure.py --out docs/overview.png
"""
import argparse

import matplotlib

matplotlib.use("Agg")  # a file, never a window

import jdm  # noqa: E402
from jdm.data import load_tensors  # noqa: E402
from jdm.viz import overview_figure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ddpm-fmnist-small", help="shipped checkpoint to sample")
    parser.add_argument("--image-index", type=int, default=0, help="test image to noise")
    parser.add_argument("--seed", type=int, default=0, help="forward-process noise and samples")
    parser.add_argument("--out", default="docs/overview.png", help="PNG to write")
    args = parser.parse_args()
    images, _ = load_tensors("fashion_mnist", train=False)
    overview_figure(jdm.load_pretrained(args.model), images[args.image_index:args.image_index + 1],
                    seed=args.seed, path=args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
