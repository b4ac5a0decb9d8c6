"""Post-calibration recovery, label-free: re-round quantized weights (AdaRound, GPTQ) and correct biases so each
layer's output matches the float model's, fit the activation ranges to the network's outputs (refine_ranges), or
fit both block by block with QDrop (reconstruct_blocks).
Sits beside qat: uses quantize/nn, never imported by the core."""
from .recover import LayerRecovery, RecoveryError, RecoveryReport, gather_images, recover_weights
from .blocks import BlockReport, reconstruct_blocks
from .ranges import RangeReport, refine_ranges
from .rounding import ROUNDINGS

__all__ = ["recover_weights", "gather_images", "RecoveryReport", "LayerRecovery", "RecoveryError", "ROUNDINGS",
           "refine_ranges", "RangeReport", "reconstruct_blocks", "BlockReport"]
