"""Point mambadyn at a Mamba checkpoint: per layer, the spectrum of S_C^T S_B, the (conjectural)
scenario, what the tokens do across depth, who carries the gradient, and the layer's own ODE."""

from ..nn.load import load_checkpoint
from .api import ProbeConfig, ProbeResult, probe, sample_text, write_outputs
from .attention import capture_scan_inputs, hidden_attention

__all__ = ["ProbeConfig", "ProbeResult", "capture_scan_inputs", "hidden_attention", "load_checkpoint", "probe",
           "sample_text", "write_outputs"]
