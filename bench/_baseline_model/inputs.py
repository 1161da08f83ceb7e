"""The input contract of an emotion2vec model: the audio it takes and the frames it gives.

Everything but the sample rate follows from the CNN feature encoder (`feature_encoder_spec`, one
`(channels, kernel, stride)` triple per unpadded conv): frame t of the last layer sees samples
`[t * hop, t * hop + receptive_field)`, and a frame exists exactly when that window lies inside the
clip. For the released models that is 400 samples (25 ms) every 320 samples (20 ms), 50 frames/s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Every released emotion2vec model was trained on 16 kHz mono audio. No key of the FunASR
# `config.yaml` names the rate, so it is a property of the family, not read per checkpoint.
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class InputSpec:
    """What a model expects and produces, in samples at `sample_rate`."""

    sample_rate: int  # Hz of the waveform the model takes (mono float)
    receptive_field: int  # samples one frame sees; also the shortest clip that gives a frame
    hop: int  # samples between the starts of consecutive frames (the CNN's total stride)

    @classmethod
    def from_conv_spec(
        cls, spec: Iterable[tuple[int, int, int]], sample_rate: int = SAMPLE_RATE
    ) -> InputSpec:
        """Derive the contract from `(channels, kernel, stride)` triples, first layer first."""
        layers = [(int(k), int(s)) for _, k, s in spec]
        if not layers:
            raise ValueError("feature_encoder_spec is empty")
        receptive_field, hop = 1, 1
        for k, s in layers:  # one more layer widens the window by (k - 1) of its input steps
            receptive_field += (k - 1) * hop
            hop *= s
        return cls(sample_rate=sample_rate, receptive_field=receptive_field, hop=hop)

    @property
    def frame_rate(self) -> float:
        """Frames per second (50.0 for the released models)."""
        return self.sample_rate / self.hop

    @property
    def min_duration_s(self) -> float:
        """Shortest clip that gives one frame, in seconds."""
        return self.receptive_field / self.sample_rate

    def num_frames(self, n_samples: int) -> int:
        """Frames made from `n_samples` samples: floor((N - receptive_field) / hop) + 1, 0 when shorter."""
        if n_samples < self.receptive_field:
            return 0
        return (n_samples - self.receptive_field) // self.hop + 1
