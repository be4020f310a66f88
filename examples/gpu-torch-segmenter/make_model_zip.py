"""Write model.zip (weights.pt + config.json) for the example segmenter.

The weights are set by hand instead of trained, so the example is reproducible and small: the net smooths the
volume with a 3x3x3 mean filter and marks voxels whose smoothed intensity is above THRESHOLD (e.g. bone in a CT).
Swap in your own trained state dict the same way: `torch.save(net.state_dict(), "weights.pt")`.

Usage: python make_model_zip.py [OUT.zip] [--threshold HU] [--features N]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile

import torch
from segmenter import Segmenter

MEAN, STD = 0.0, 1000.0  # intensity normalisation for CT in Hounsfield units


def handmade_weights(net: Segmenter, threshold: float) -> None:
    """Channel 0 carries a smoothed copy of the input; the head thresholds it; other channels stay silent."""
    state = {name: torch.zeros_like(value) for name, value in net.state_dict().items()}
    state["conv1.weight"][0, 0] = 1.0 / 27.0  # 3x3x3 mean filter
    # Shift up before the ReLU so air (-1000 HU, i.e. -1.0 normalised) is not clipped into the threshold.
    state["conv1.bias"][0] = 2.0
    state["conv2.weight"][0, 0, 1, 1, 1] = 1.0  # identity
    steepness = 50.0
    state["head.weight"][0, 0] = steepness
    state["head.bias"][0] = -steepness * ((threshold - MEAN) / STD + 2.0)
    net.load_state_dict(state)


def main(argv: list[str] | None = None) -> int:
    """Build the zip; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="model.zip", help="where to write the zip (default model.zip)")
    parser.add_argument("--threshold", type=float, default=300.0, help="intensity to segment above (default 300)")
    parser.add_argument("--features", type=int, default=8, help="channels of the hidden layers (default 8)")
    args = parser.parse_args(argv)
    if args.features < 1:
        parser.error("--features must be at least 1")
    net = Segmenter(features=args.features)
    handmade_weights(net, args.threshold)
    weights = io.BytesIO()
    torch.save(net.state_dict(), weights)
    config = {"features": args.features, "mean": MEAN, "std": STD, "probability": 0.5, "threshold": args.threshold}
    with zipfile.ZipFile(args.out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("weights.pt", weights.getvalue())
        archive.writestr("config.json", json.dumps(config, indent=2) + "\n")
    print(f"wrote {args.out}: weights.pt ({len(weights.getvalue())} bytes), config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
