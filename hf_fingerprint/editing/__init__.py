"""Knowledge editors that plant fingerprints: one shared mechanism (``context``, ``tracing``, ``covariance``)
and one small module per method."""

from .delta import EditDelta
from .distinctiveness import trigger_distinctiveness
from .fisher import output_fisher
from .inject import METHODS, InjectionResult, get_fingerprint_model, inject
from .layout import ModelLayout, find_layout
from .rledit import RLEditConfig, RLEditHypernetwork, train_rledit

__all__ = ["EditDelta", "InjectionResult", "METHODS", "ModelLayout", "RLEditConfig", "RLEditHypernetwork", "find_layout",
           "get_fingerprint_model", "inject", "output_fisher", "train_rledit", "trigger_distinctiveness"]
