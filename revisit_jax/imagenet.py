"""ImageNet's evaluation conventions, shared by the JAX side (the augmentation, the kNN monitor)
and the PyTorch evaluations (eval/), which do the same op with their own library.

Plain Python, no imports: eval/ reads it without loading JAX.
"""

MEAN = (0.485, 0.456, 0.406)  # per RGB channel, on [0, 1] pixels (torchvision's ImageNet)
STD = (0.229, 0.224, 0.225)


def resize_for_crop(crop: int) -> int:
  """The shorter side an image is resized to before a centre crop of `crop` (256 for 224)."""
  return round(crop * 256 / 224)
