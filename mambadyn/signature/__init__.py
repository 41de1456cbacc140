"""The signature lens (Cirone et al., arXiv 2402.19047): a linear recurrence with input-controlled
transitions is a linear controlled differential equation driven by the path w = (t, u). Its state is
therefore a fixed linear map of w's signature. This package measures how well a ridge regression on
truncated signatures predicts the states of exact cases, of trained S6 layers and of stacks."""

from .features import signature, signature_width, time_path
from .lens import SignatureConfig, SignatureResult, run_lens
from .ridge import RidgeFit, ridge_r2

__all__ = ["RidgeFit", "SignatureConfig", "SignatureResult", "ridge_r2", "run_lens", "signature",
           "signature_width", "time_path"]
