"""A small U-Net in Flax NNX, channels-last, 2D or 3D.

Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015 (3D: Çiçek et al., "3D U-Net", MICCAI 2016). This version is
sized to train in a couple of minutes on two CPU cores: three levels (16, 32, 64
features by default), GroupNorm, ReLU, max pooling down and a stride-2 transposed
convolution up; ``spatial_dims=3`` uses 3x3x3 kernels and 2x2x2 pooling.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class ConvBlock(nnx.Module):
    """Two (3x3 convolution, GroupNorm, ReLU) layers."""

    def __init__(
        self, in_features: int, out_features: int, *, spatial_dims: int = 2, rngs: nnx.Rngs
    ):
        kernel = (3,) * spatial_dims
        # GroupNorm normalises each sample on its own, so training and evaluation
        # behave the same and a data-parallel batch needs no cross-device statistics.
        groups = min(8, out_features)
        self.conv1 = nnx.Conv(in_features, out_features, kernel, use_bias=False, rngs=rngs)
        self.norm1 = nnx.GroupNorm(out_features, num_groups=groups, rngs=rngs)
        self.conv2 = nnx.Conv(out_features, out_features, kernel, use_bias=False, rngs=rngs)
        self.norm2 = nnx.GroupNorm(out_features, num_groups=groups, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.norm1(self.conv1(x)))
        return nnx.relu(self.norm2(self.conv2(x)))


class UNet(nnx.Module):
    """U-Net mapping images ``(batch, *spatial, in_features)`` to ``(batch, *spatial, classes)``.

    Every spatial size must be divisible by ``2 ** (len(features) - 1)``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        features: Sequence[int] = (16, 32, 64),
        *,
        spatial_dims: int = 2,
        rngs: nnx.Rngs,
    ):
        features = tuple(features)
        self.window = (2,) * spatial_dims
        self.encoders = nnx.List()
        previous = in_features
        for width in features:
            self.encoders.append(ConvBlock(previous, width, spatial_dims=spatial_dims, rngs=rngs))
            previous = width
        self.upsamples = nnx.List()
        self.decoders = nnx.List()
        for width in reversed(features[:-1]):
            self.upsamples.append(
                nnx.ConvTranspose(previous, width, self.window, strides=self.window, rngs=rngs)
            )
            # The decoder sees the upsampled features and the skip connection.
            self.decoders.append(ConvBlock(2 * width, width, spatial_dims=spatial_dims, rngs=rngs))
            previous = width
        self.head = nnx.Conv(previous, num_classes, (1,) * spatial_dims, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = nnx.max_pool(x, window_shape=self.window, strides=self.window)
            x = encoder(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for upsample, decoder in zip(self.upsamples, self.decoders, strict=True):
            x = upsample(x)
            x = decoder(jnp.concatenate([x, skips.pop()], axis=-1))
        return self.head(x)
