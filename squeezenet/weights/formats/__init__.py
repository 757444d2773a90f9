"""One small module per foreign weights format; each turns bytes into named arrays and back.

The common currency is a list of layers in data-flow order::

    Layers = list[tuple[str, dict[str, np.ndarray]]]
    # e.g. [("conv1", {"weight": (96, 3, 7, 7), "bias": (96,)}),
    #       ("fire2/squeeze1x1", {...}), ...,
    #       ("fire2/bn4", {"weight", "bias", "running_mean", "running_var"}), ...]

Parameter names follow PyTorch (weight, bias, running_mean, running_var); layer names are the
format's own. Nothing here imports torch modules or knows the model classes: the loader
(``squeezenet.weights.layers``) assigns layers to a model's parameters by position and shape.
Every reader raises ``squeezenet.errors.FormatError`` with a message naming the file and
what is wrong; none returns a partial result.
"""

import numpy as np

Layers = list[tuple[str, dict[str, np.ndarray]]]
