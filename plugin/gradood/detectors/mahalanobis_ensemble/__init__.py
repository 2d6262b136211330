"""Lee et al.'s Mahalanobis detector as the GradNorm paper ran it: several layers, input
preprocessing, and a logistic regression trained against FGSM examples.

For each selected layer :math:`l`, :math:`f_l(x)` is the layer's output averaged over its
spatial positions. On ID training data, class means :math:`\\mu_{l,c}` and one covariance
:math:`\\Sigma_l` shared by all classes are estimated (maximum likelihood, as sklearn's
``EmpiricalCovariance`` in the official code). With
:math:`d_{l,c}(x) = (f_l(x) - \\mu_{l,c})^\\top \\Sigma_l^{-1} (f_l(x) - \\mu_{l,c})`, the layer's
confidence is

.. math::
    M_l(x) = \\max_c -\\tfrac12 \\, d_{l,c}(x).

*Input preprocessing* (per layer, magnitude :math:`\\varepsilon`): with :math:`c^*` the closest
class at :math:`x`,

.. math::
    x'_l = x - \\varepsilon \\, s\\big(\\nabla_x \\tfrac12 d_{l,c^*}(x)\\big) / \\sigma,
    \\qquad s(g) = +1 \\text{ if } g \\ge 0 \\text{ else } -1,

the official sign convention (``torch.ge``), and :math:`\\sigma` the per-channel standard deviation
of the input normalization (``norm_std``): :math:`\\varepsilon` is then in pixel units. Without
``norm_std`` the step is taken in model-input units, as the official ImageNet code does.

*Combination*: a logistic regression (sklearn's ``LogisticRegressionCV``, the official settings)
on :math:`(M_1(x'_1), \\dots, M_L(x'_L))` separates ID samples (label 0) from FGSM copies of them
(label 1),

.. math::
    x_{adv} = \\mathrm{clip}\\big(x + \\delta \\,
        s(\\nabla_x \\mathrm{CE}(f(x), y)) / \\sigma\\big), \\qquad \\delta = 0.05.

The outlier score is the regression's log-odds of "adversarial", :math:`w^\\top M + b`. The
official score is the probability :math:`\\mathrm{sigmoid}(w^\\top M + b)` (negated as a
confidence): the same ranking, except that the float64 sigmoid saturates to ties at 1.

Modules: :mod:`.gaussians` (the tied Gaussians), :mod:`.layers` (which layers, their pooled
outputs), :mod:`.perturbation` (the official sign, preprocessing, FGSM), :mod:`.regression`
(the logistic regression), :mod:`.detector` (:class:`MahalanobisEnsemble`).
"""

from .detector import PAPER_MAGNITUDES, TUNING_SAMPLES, MahalanobisEnsemble
from .gaussians import tied_gaussians
from .layers import default_layers
from .perturbation import ADVERSARIAL_STEP, fgsm, official_sign

__all__ = [
    "ADVERSARIAL_STEP",
    "PAPER_MAGNITUDES",
    "TUNING_SAMPLES",
    "MahalanobisEnsemble",
    "default_layers",
    "fgsm",
    "official_sign",
    "tied_gaussians",
]
