"""Point mambadyn at a selective-SSM checkpoint (Mamba, or any family in ``nn.families``): per layer, the
spectrum of its interaction matrix, the (conjectural) scenario, what the tokens do across depth, who carries
the gradient, the layer's own ODE (Mamba-1), which earlier tokens it reads, over one window or many."""

from ..nn.load import load_checkpoint
from .api import ProbeConfig, ProbeResult, probe, probe_batch, sample_text, write_outputs
from .attention import capture_scan_inputs, hidden_attention
from .capture import capture
from .windows import probe_windows

__all__ = ["ProbeConfig", "ProbeResult", "capture", "capture_scan_inputs", "hidden_attention", "load_checkpoint", "probe",
           "probe_batch", "probe_windows", "sample_text", "write_outputs"]
