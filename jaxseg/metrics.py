"""Segmentation metrics on hard predictions (integer class maps), as pure JAX functions.

Overlap scores and a mergeable statistics state (:mod:`jaxseg._metrics`), and
boundary-distance metrics (:mod:`jaxseg._distance`).
"""

from jaxseg._components import Components as Components
from jaxseg._components import connected_components as connected_components
from jaxseg._confusion import absolute_volume_difference as absolute_volume_difference
from jaxseg._confusion import confusion_metrics as confusion_metrics
from jaxseg._confusion import fbeta_score as fbeta_score
from jaxseg._confusion import generalized_dice_score as generalized_dice_score
from jaxseg._confusion_formulas import CONFUSION_METRICS as CONFUSION_METRICS
from jaxseg._distance import average_surface_distance as average_surface_distance
from jaxseg._distance import boundary_mask as boundary_mask
from jaxseg._distance import euclidean_distance_transform as euclidean_distance_transform
from jaxseg._distance import hausdorff_distance as hausdorff_distance
from jaxseg._distance import surface_dice as surface_dice
from jaxseg._instances import LesionWiseScores as LesionWiseScores
from jaxseg._instances import PanopticQuality as PanopticQuality
from jaxseg._instances import lesion_wise_scores as lesion_wise_scores
from jaxseg._instances import panoptic_quality as panoptic_quality
from jaxseg._metrics import MetricState as MetricState
from jaxseg._metrics import compute as compute
from jaxseg._metrics import confusion_matrix as confusion_matrix
from jaxseg._metrics import dice_score as dice_score
from jaxseg._metrics import exact_counts as exact_counts
from jaxseg._metrics import iou_score as iou_score
from jaxseg._metrics import mean_dice as mean_dice
from jaxseg._metrics import mean_iou as mean_iou
from jaxseg._metrics import merge as merge
from jaxseg._metrics import metric_state as metric_state
from jaxseg._metrics import predictions_from_logits as predictions_from_logits
from jaxseg._metrics import update as update
