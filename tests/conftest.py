"""Shared test set-up.

torchvision must be imported before TensorFlow: the other order crashes in torchvision's
import of triton (a native-library clash), and tests of both halves run in one process.
"""

import torchvision  # noqa: F401
