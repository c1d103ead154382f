"""jaxseg: segmentation losses and metrics as pure, jit-compiled JAX functions."""

from jaxseg import metrics as metrics
from jaxseg._boundary import boundary_loss as boundary_loss
from jaxseg._boundary import hausdorff_dt_loss as hausdorff_dt_loss
from jaxseg._checks import checked as checked
from jaxseg._checks import validate_values as validate_values
from jaxseg._combinators import CombinedLoss as CombinedLoss
from jaxseg._combinators import combine as combine
from jaxseg._combinators import deep_supervision as deep_supervision
from jaxseg._combinators import log_transform as log_transform
from jaxseg._combinators import with_components as with_components
from jaxseg._compound import bce_log_dice as bce_log_dice
from jaxseg._compound import dice_ce as dice_ce
from jaxseg._compound import dice_focal as dice_focal
from jaxseg._correlation import mcc_loss as mcc_loss
from jaxseg._lovasz import lovasz_hinge_loss as lovasz_hinge_loss
from jaxseg._lovasz import lovasz_softmax_loss as lovasz_softmax_loss
from jaxseg._overlap import dice_loss as dice_loss
from jaxseg._overlap import generalized_dice_loss as generalized_dice_loss
from jaxseg._overlap import iou_loss as iou_loss
from jaxseg._overlap import jaccard_loss as jaccard_loss
from jaxseg._overlap import tversky_loss as tversky_loss
from jaxseg._pixel import cross_entropy as cross_entropy
from jaxseg._pixel import focal_loss as focal_loss
from jaxseg._regions import brats_regions as brats_regions
from jaxseg._regions import regions_from_labels as regions_from_labels
from jaxseg._stats import OverlapStats as OverlapStats
from jaxseg._stats import overlap_stats as overlap_stats
from jaxseg._topk import topk_cross_entropy as topk_cross_entropy
from jaxseg._topology import cldice_loss as cldice_loss
from jaxseg._topology import dice_cldice as dice_cldice
from jaxseg._unified_focal import asymmetric_unified_focal_loss as asymmetric_unified_focal_loss
from jaxseg._wasserstein import (
    generalized_wasserstein_dice_loss as generalized_wasserstein_dice_loss,
)

__version__ = "0.1.0"
