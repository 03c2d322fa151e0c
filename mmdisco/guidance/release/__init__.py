"""The authors' released MMDisCo discriminators (SonyResearch/MMDisCo), rebuilt to guide our sampler.

Why: the four released checkpoints (``SETTINGS``) are trained joint discriminators. These modules
are written from the release's architecture and parameter names (not its code), so a released
state dict loads with ``strict=True`` and gives the release's logit and residuals
(``docs/released.md``: architecture, layouts, separability, how to load one).

Layouts are ours: audio ``[N, C, T, M]`` (MM-Diffusion settings: waveform ``[N, 1, L]``), video
``[N, F, C, H, W]``; ``to_ours`` converts the base models' native latents.

The guidance quantity. The release differentiates not the logit ``h`` but
``φ(h) = log(p + 1e-5) − log1p(−p + 1e-5)``, ``p = sigmoid(h)``, and scales the gradient by
``−σ_t``. ``dφ/dh = p(1−p)(1/(p+ε) + 1/(1−p+ε))`` is 1 − O(ε) for moderate ``|h|`` but falls
towards 0 once ``|h| ≳ log(1/ε) ≈ 11.5`` (and is exactly 0 where float32 ``sigmoid`` saturates).
So ``ReleasedDiscriminator.forward`` returns ``φ``: our ``residuals(module, …) = −σ_t ∇φ`` is
then exactly the release's residual. ``logit`` returns ``h``.
"""
from mmdisco.guidance.release.fit import BASE_KINDS, check_bases, check_fits
from mmdisco.guidance.release.model import (ReleasedDiscriminator, ReleasedGuide, build_released,
                                            load_released, load_state_strict)
from mmdisco.guidance.release.settings import (CHECKPOINTS_URL, EPS, SETTINGS, ReleasedArch,
                                               ReleasedSetting, arch_from_release_config,
                                               potential_slope, release_potential, resolve_arch,
                                               to_native, to_ours)

__all__ = ["BASE_KINDS", "CHECKPOINTS_URL", "EPS", "SETTINGS", "ReleasedArch",
           "ReleasedDiscriminator", "ReleasedGuide", "ReleasedSetting", "arch_from_release_config",
           "build_released", "check_bases", "check_fits", "load_released", "load_state_strict",
           "potential_slope", "release_potential", "resolve_arch", "to_native", "to_ours"]
