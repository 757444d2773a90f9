"""Deep Compression (Han et al. 2016) for SqueezeNet: prune, share weights, Huffman-code.

``pipeline.compress`` runs the whole job; the ``.sqz`` format it writes is
``squeezenet.weights.formats.sqz``.
"""
