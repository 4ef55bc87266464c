"""Kokoro-82M's network (StyleTTS 2 text side + iSTFTNet decoder) as plain torch modules.

Written for voxport rather than imported from the `kokoro` package: that package pulls its G2P stack
(misaki, spaCy) on import and samples noise inside `forward`. The module tree and parameter names are
KModel's (hexgrad, Apache-2.0) with weight norm folded into `weight`, so a state dict moves between the
two by renaming `weight_g`/`weight_v` only (`checkpoint.py`), and the reference check in the tests can
load the same weights into both.

Two things differ on purpose:
- the harmonic source's Gaussian noise is an input (`noise`), as VITS's noise is, so the reference and
  an exported graph can be fed the same draw. Its random initial phases are left out: they only touch
  the utterance's first sample, which the source's linear downsampling never reads (see
  `HarmonicSource`), so they have no effect on the output.
- the STFTs are convolutions with fixed DFT bases instead of `torch.stft`/`torch.istft`, which ONNX,
  Core ML and GGUF runtimes cannot all express. Everything else repeats KModel's operations in KModel's
  order: the source's phase reaches ~10^5 radians in float32, so a different but equivalent formula
  moves it by whole ulps and the reference check would measure float32 rounding, not the network.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AlbertConfig, AlbertModel


def _conv(
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = True,
) -> nn.Conv1d:
    return nn.Conv1d(cin, cout, kernel, stride, padding=padding, dilation=dilation, groups=groups, bias=bias)


class AdaIN1d(nn.Module):
    """Instance norm whose scale and shift come from the style vector."""

    def __init__(self, style_dim: int, channels: int) -> None:
        super().__init__()
        # KModel keeps InstanceNorm's affine weights (ones/zeros in every released checkpoint): kept as
        # parameters so the state dicts match name for name
        self.norm = nn.InstanceNorm1d(channels, affine=True)
        self.fc = nn.Linear(style_dim, channels * 2)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.fc(s)
        h = h.view(h.size(0), h.size(1), 1)
        gamma, beta = torch.chunk(h, chunks=2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdaLayerNorm(nn.Module):
    def __init__(self, style_dim: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.fc = nn.Linear(style_dim, channels * 2)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x [B, T, C] → [B, T, C]."""
        h = self.fc(s)
        gamma, beta = torch.chunk(h.view(h.size(0), 1, h.size(1)), chunks=2, dim=2)
        x = F.layer_norm(x, (self.channels,), eps=self.eps)
        return (1 + gamma) * x + beta


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels of a [B, C, T] tensor (KModel's `LayerNorm`: gamma/beta)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class AdainResBlk1d(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        self.learned_sc = dim_in != dim_out
        self.conv1 = _conv(dim_in, dim_out, 3, padding=1)
        self.conv2 = _conv(dim_out, dim_out, 3, padding=1)
        self.norm1 = AdaIN1d(style_dim, dim_in)
        self.norm2 = AdaIN1d(style_dim, dim_out)
        if self.learned_sc:
            self.conv1x1 = _conv(dim_in, dim_out, 1, bias=False)
        if upsample:
            self.pool = nn.ConvTranspose1d(
                dim_in, dim_in, kernel_size=3, stride=2, groups=dim_in, padding=1, output_padding=1
            )

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        shortcut = F.interpolate(x, scale_factor=2.0, mode="nearest") if self.upsample else x
        if self.learned_sc:
            shortcut = self.conv1x1(shortcut)
        h = F.leaky_relu(self.norm1(x, s), 0.2)
        if self.upsample:
            h = self.pool(h)
        h = self.conv1(h)
        h = self.conv2(F.leaky_relu(self.norm2(h, s), 0.2))
        return (h + shortcut) * torch.rsqrt(torch.tensor(2.0))


class AdaINResBlock1(nn.Module):
    """HiFi-GAN's resblock with style-conditioned norms and Snake activations."""

    def __init__(self, channels: int, kernel: int, dilations: list[int], style_dim: int) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            _conv(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            _conv(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations
        )
        self.adain1 = nn.ModuleList(AdaIN1d(style_dim, channels) for _ in dilations)
        self.adain2 = nn.ModuleList(AdaIN1d(style_dim, channels) for _ in dilations)
        self.alpha1 = nn.ParameterList(nn.Parameter(torch.ones(1, channels, 1)) for _ in dilations)
        self.alpha2 = nn.ParameterList(nn.Parameter(torch.ones(1, channels, 1)) for _ in dilations)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        for c1, c2, n1, n2, a1, a2 in zip(
            self.convs1, self.convs2, self.adain1, self.adain2, self.alpha1, self.alpha2, strict=True
        ):
            xt = n1(x, s)
            xt = xt + (1 / a1) * (torch.sin(a1 * xt) ** 2)
            xt = c1(xt)
            xt = n2(xt, s)
            xt = xt + (1 / a2) * (torch.sin(a2 * xt) ** 2)
            xt = c2(xt)
            x = xt + x
        return x


def _bilstm(cin: int, hidden: int) -> nn.LSTM:
    return nn.LSTM(cin, hidden, 1, batch_first=True, bidirectional=True)


class TextEncoder(nn.Module):
    """Phoneme embedding → 3 × (conv, layer norm, leaky ReLU) → BiLSTM: the decoder's per-token input."""

    def __init__(self, channels: int, kernel: int, depth: int, n_symbols: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_symbols, channels)
        self.cnn = nn.ModuleList(
            nn.Sequential(
                _conv(channels, channels, kernel, padding=(kernel - 1) // 2),
                ChannelLayerNorm(channels),
                nn.LeakyReLU(0.2),
            )
            for _ in range(depth)
        )
        self.lstm = _bilstm(channels, channels // 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [1, T] → [1, C, T]."""
        x = self.embedding(ids).transpose(1, 2)
        for block in self.cnn:
            x = block(x)
        x, _ = self.lstm(x.transpose(1, 2))
        return x.transpose(1, 2)


class DurationEncoder(nn.Module):
    """BiLSTMs alternating with style-conditioned layer norms, the style appended after each."""

    def __init__(self, style_dim: int, d_model: int, nlayers: int) -> None:
        super().__init__()
        self.lstms = nn.ModuleList()
        for _ in range(nlayers):
            self.lstms.append(_bilstm(d_model + style_dim, d_model // 2))
            self.lstms.append(AdaLayerNorm(style_dim, d_model))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """x [1, C, T], style [1, S] → [1, T, C + S]."""
        s = style[:, :, None].expand(-1, -1, x.shape[2])
        x = torch.cat([x, s], dim=1).transpose(1, 2)
        for block in self.lstms:
            if isinstance(block, AdaLayerNorm):
                x = torch.cat([block(x, style), s.transpose(1, 2)], dim=2)
            else:
                x, _ = block(x)
        return x


class LinearNorm(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear_layer = nn.Linear(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_layer(x)


class ProsodyPredictor(nn.Module):
    def __init__(self, style_dim: int, d_hid: int, nlayers: int, max_dur: int) -> None:
        super().__init__()
        self.text_encoder = DurationEncoder(style_dim, d_hid, nlayers)
        self.lstm = _bilstm(d_hid + style_dim, d_hid // 2)
        self.duration_proj = LinearNorm(d_hid, max_dur)
        self.shared = _bilstm(d_hid + style_dim, d_hid // 2)
        self.F0 = nn.ModuleList(
            [
                AdainResBlk1d(d_hid, d_hid, style_dim),
                AdainResBlk1d(d_hid, d_hid // 2, style_dim, upsample=True),
                AdainResBlk1d(d_hid // 2, d_hid // 2, style_dim),
            ]
        )
        self.N = nn.ModuleList(
            [
                AdainResBlk1d(d_hid, d_hid, style_dim),
                AdainResBlk1d(d_hid, d_hid // 2, style_dim, upsample=True),
                AdainResBlk1d(d_hid // 2, d_hid // 2, style_dim),
            ]
        )
        self.F0_proj = _conv(d_hid // 2, 1, 1)
        self.N_proj = _conv(d_hid // 2, 1, 1)

    def durations(self, d: torch.Tensor, speed: torch.Tensor) -> torch.Tensor:
        """Per-token frame counts (float, before rounding): the sum of 50 sigmoids, divided by speed."""
        x, _ = self.lstm(d)
        return torch.sigmoid(self.duration_proj(x)).sum(dim=-1) / speed

    def f0_n(self, en: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame features [1, C, F] → pitch and energy curves [1, 2F]."""
        x, _ = self.shared(en.transpose(1, 2))
        f0 = x.transpose(1, 2)
        for block in self.F0:
            f0 = block(f0, s)
        n = x.transpose(1, 2)
        for block in self.N:
            n = block(n, s)
        return self.F0_proj(f0).squeeze(1), self.N_proj(n).squeeze(1)


class DFT(nn.Module):
    """torch.stft/istft (Hann window, centred, reflect padding) as fixed convolutions, for any runtime."""

    forward_basis: torch.Tensor
    inverse_basis: torch.Tensor
    window_sq: torch.Tensor

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop = hop
        bins = n_fft // 2 + 1
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(bins, dtype=torch.float64)[:, None]
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)  # periodic Hann, torch.hann_window's
        angle = 2 * math.pi * k * n / n_fft
        # forward: real and imaginary parts of X_k = Σ x[n] w[n] e^{-2πikn/N}
        forward = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])[:, None, :]
        # inverse (one-sided): x[n] = (1/N) Σ_k c_k (Re X_k cos + ... ), c_0 = c_{N/2} = 1, else 2; the
        # imaginary parts of the DC and Nyquist bins are ignored, as irfft does
        c = torch.full((bins, 1), 2.0, dtype=torch.float64)
        c[0] = 1.0
        c[-1] = 1.0
        inverse = torch.cat([c * torch.cos(angle), -c * torch.sin(angle)]) * window / n_fft
        self.register_buffer("forward_basis", forward.float(), persistent=False)
        self.register_buffer("inverse_basis", inverse.float()[:, None, :], persistent=False)
        self.register_buffer("window_sq", (window**2).float()[None, None, :], persistent=False)

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [1, L] → magnitude and phase [1, bins, frames]."""
        pad = self.n_fft // 2
        x = F.pad(x[:, None, :], (pad, pad), mode="reflect")
        spec = F.conv1d(x, self.forward_basis, stride=self.hop)
        real, imag = spec.chunk(2, dim=1)
        # The DC and Nyquist bins of a real signal are real: an FFT gives them an imaginary part of exactly
        # +0, so their phase is 0 or π. A convolution leaves ±1e-8 there, and atan2 of that flips between
        # π and −π: a 2π jump the next convolution sees. Their phase is set from the sign of the real part.
        # The same holds for every bin of the first frame: centred on sample 0 of a reflect-padded signal,
        # that frame is even about the window's centre, so X_k = (−1)^k·(a real number). Its imaginary
        # parts are rounding noise whose sign depends on the runtime's summation order (torch's conv1d,
        # torch.stft's FFT and a numpy im2col matmul all pick differently), and a 2π flip there cost the
        # Core ML decoder ~34 dB on the small test model.
        real_phase = (real < 0).to(real.dtype) * math.pi
        inner = torch.cat([real_phase[:, 1:-1, :1], torch.atan2(imag[:, 1:-1, 1:], real[:, 1:-1, 1:])], dim=2)
        phase = torch.cat([real_phase[:, :1], inner, real_phase[:, -1:]], dim=1)
        return torch.sqrt(real**2 + imag**2), phase

    def inverse(self, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """[1, bins, frames] → [1, 1, hop × (frames − 1)], as torch.istft(center=True)."""
        spec = torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1)
        frames = spec.shape[2]
        audio = F.conv_transpose1d(spec, self.inverse_basis, stride=self.hop)
        ones = torch.ones(1, 1, frames, dtype=spec.dtype)
        envelope = F.conv_transpose1d(ones, self.window_sq, stride=self.hop)
        pad = self.n_fft // 2
        end = audio.shape[2] - pad
        return audio[:, :, pad:end] / envelope[:, :, pad:end]


class HarmonicSource(nn.Module):
    """KModel's SourceModuleHnNSF + SineGen: f0 → 9 harmonics (+ noise) → one excitation signal.

    `noise` [1, samples, harmonics] is SineGen's standard-normal draw. SineGen's random initial phases
    are added to the utterance's first sample only, and the linear downsampling by 300 reads samples
    149 and 150 of each block, so they never reach the output: not an input here."""

    def __init__(self, sample_rate: int, upsample: int, harmonics: int = 9) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.upsample = upsample
        self.harmonics = harmonics
        self.sine_amp = 0.1
        self.noise_std = 0.003
        self.voiced_threshold = 10.0
        self.l_linear = nn.Linear(harmonics, 1)
        #: resample with reshapes and arithmetic instead of F.interpolate: coremltools refuses a linear
        #: resampling by 1/300 (a float output size) and voxport's MIL interpreter has no
        #: upsample_bilinear. The downsampling is bit-identical; the upsampling is not (torch computes
        #: each source position in float32, which loses precision as the position grows: ~1e-4 of the
        #: source signal over 2.5 s), so only the Core ML graphs (`KokoroModel.bounded_graphs`) set it
        self.explicit_resample = False

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        """F.interpolate(x, scale_factor=1/k, mode="linear") for even k: the mean of each block's two
        middle samples (source position k·j + (k − 1)/2), 0.5·a + 0.5·b exactly as torch computes it."""
        k = self.upsample
        blocks = x.reshape(x.shape[0], x.shape[1], -1, k)
        return blocks[..., k // 2 - 1] * 0.5 + blocks[..., k // 2] * 0.5

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        """F.interpolate(x, scale_factor=k, mode="linear"): output k·j + r lies at source position
        j + w_r, w_r = (r + 0.5)/k − 0.5, between samples j − 1 and j (w_r < 0) or j and j + 1, the
        edges clamped. The weights depend on r alone, so this is three broadcast products and a reshape
        (no gathers, no float positions that lose precision as j grows)."""
        k = self.upsample
        w = (torch.arange(k, dtype=torch.float64) + 0.5) / k - 0.5
        before = torch.where(w < 0, -w, 0.0).to(x.dtype)
        here = (1 - w.abs()).to(x.dtype)
        after = torch.where(w >= 0, w, 0.0).to(x.dtype)
        padded = torch.cat([x[:, :, :1], x, x[:, :, -1:]], dim=2)
        out = (
            padded[:, :, :-2, None] * before
            + padded[:, :, 1:-1, None] * here
            + padded[:, :, 2:, None] * after
        )
        return out.reshape(x.shape[0], x.shape[1], -1)

    def forward(self, f0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """f0 [1, samples, 1] (Hz), noise [1, samples, harmonics] → excitation [1, samples, 1]."""
        orders = torch.arange(1, self.harmonics + 1, dtype=f0.dtype)[None, None, :]
        rad = f0 * orders / self.sample_rate
        # x % 1 written out: torch computes it as x − floor(x / 1)·1, the same bits as x − floor(x), but
        # coremltools converts it to that floor_div and its noop_elimination pass then drops floor_div(x, 1)
        # as an identity (wrong for floats), leaving x − x = 0: a Core ML decoder without its harmonics
        rad = rad - torch.floor(rad)
        if self.explicit_resample:
            rad = self._down(rad.transpose(1, 2))
            phase = torch.cumsum(rad.transpose(1, 2), dim=1) * 2 * math.pi
            phase = self._up(phase.transpose(1, 2) * self.upsample).transpose(1, 2)
        else:
            rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / self.upsample, mode="linear")
            phase = torch.cumsum(rad.transpose(1, 2), dim=1) * 2 * math.pi
            phase = F.interpolate(
                phase.transpose(1, 2) * self.upsample, scale_factor=self.upsample, mode="linear"
            ).transpose(1, 2)
        sines = torch.sin(phase) * self.sine_amp
        uv = (f0 > self.voiced_threshold).to(f0.dtype)
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        sines = sines * uv + noise_amp * noise
        return torch.tanh(self.l_linear(sines))


class Generator(nn.Module):
    def __init__(
        self,
        style_dim: int,
        resblock_kernel_sizes: list[int],
        upsample_rates: list[int],
        upsample_initial_channel: int,
        resblock_dilation_sizes: list[list[int]],
        upsample_kernel_sizes: list[int],
        gen_istft_n_fft: int,
        gen_istft_hop_size: int,
        sample_rate: int,
    ) -> None:
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.upsample_scale = math.prod(upsample_rates) * gen_istft_hop_size
        self.m_source = HarmonicSource(sample_rate, self.upsample_scale)
        self.n_fft = gen_istft_n_fft
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        self.noise_convs = nn.ModuleList()
        self.noise_res = nn.ModuleList()
        ch = upsample_initial_channel
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True)):
            ch = upsample_initial_channel // (2 ** (i + 1))
            self.ups.append(nn.ConvTranspose1d(2 * ch, ch, k, u, padding=(k - u) // 2))
            for kernel, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(AdaINResBlock1(ch, kernel, dilations, style_dim))
            if i + 1 < len(upsample_rates):
                stride = math.prod(upsample_rates[i + 1 :])
                self.noise_convs.append(
                    _conv(self.n_fft + 2, ch, stride * 2, stride, padding=(stride + 1) // 2)
                )
                self.noise_res.append(AdaINResBlock1(ch, 7, [1, 3, 5], style_dim))
            else:
                self.noise_convs.append(_conv(self.n_fft + 2, ch, 1))
                self.noise_res.append(AdaINResBlock1(ch, 11, [1, 3, 5], style_dim))
        self.conv_post = _conv(ch, self.n_fft + 2, 7, padding=3)
        self.stft = DFT(gen_istft_n_fft, gen_istft_hop_size)

    def forward(
        self, x: torch.Tensor, s: torch.Tensor, f0: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """x [1, C, 2F], f0 [1, 2F] (Hz), noise [1, samples, 9] → audio [1, samples]."""
        f0 = f0[:, :, None].expand(-1, -1, self.upsample_scale).reshape(1, -1, 1)  # nearest, exactly
        source = self.m_source(f0, noise).transpose(1, 2).squeeze(1)
        har = torch.cat(self.stft.transform(source), dim=1)
        for i, up in enumerate(self.ups):
            x = F.leaky_relu(x, 0.1)
            x_source = self.noise_res[i](self.noise_convs[i](har), s)
            x = up(x)
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + x_source
            xs = self.resblocks[i * self.num_kernels](x, s)
            for j in range(1, self.num_kernels):
                xs = xs + self.resblocks[i * self.num_kernels + j](x, s)
            x = xs / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))
        bins = self.n_fft // 2 + 1
        return self.stft.inverse(torch.exp(x[:, :bins]), torch.sin(x[:, bins:])).squeeze(1)


class Decoder(nn.Module):
    def __init__(self, dim_in: int, style_dim: int, sample_rate: int, **istft: Any) -> None:
        super().__init__()
        self.encode = AdainResBlk1d(dim_in + 2, 1024, style_dim)
        self.decode = nn.ModuleList(
            [
                AdainResBlk1d(1024 + 2 + 64, 1024, style_dim),
                AdainResBlk1d(1024 + 2 + 64, 1024, style_dim),
                AdainResBlk1d(1024 + 2 + 64, 1024, style_dim),
                AdainResBlk1d(1024 + 2 + 64, 512, style_dim, upsample=True),
            ]
        )
        self.F0_conv = _conv(1, 1, 3, stride=2, padding=1)
        self.N_conv = _conv(1, 1, 3, stride=2, padding=1)
        self.asr_res = nn.Sequential(_conv(512, 64, 1))
        self.generator = Generator(style_dim, sample_rate=sample_rate, **istft)

    def forward(
        self, asr: torch.Tensor, f0: torch.Tensor, n: torch.Tensor, s: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        f0_down = self.F0_conv(f0[:, None])
        n_down = self.N_conv(n[:, None])
        x = self.encode(torch.cat([asr, f0_down, n_down], dim=1), s)
        asr_res = self.asr_res(asr)
        for block in self.decode:  # every block sees the skip inputs again (the upsampling one is last)
            x = block(torch.cat([x, asr_res, f0_down, n_down], dim=1), s)
        return self.generator(x, s, f0, noise)


class KokoroNet(nn.Module):
    """The whole model; submodule names are KModel's (bert, bert_encoder, predictor, text_encoder,
    decoder)."""

    def __init__(self, config: dict[str, Any], sample_rate: int = 24000) -> None:
        super().__init__()
        albert = AlbertConfig(vocab_size=config["n_token"], **config["plbert"])
        albert._attn_implementation = "eager"  # traces to plain ops in every exporter
        self.bert = AlbertModel(albert, add_pooling_layer=True)
        self.bert_encoder = nn.Linear(albert.hidden_size, config["hidden_dim"])
        self.predictor = ProsodyPredictor(
            config["style_dim"], config["hidden_dim"], config["n_layer"], config["max_dur"]
        )
        self.text_encoder = TextEncoder(
            config["hidden_dim"], config["text_encoder_kernel_size"], config["n_layer"], config["n_token"]
        )
        self.decoder = Decoder(config["hidden_dim"], config["style_dim"], sample_rate, **config["istftnet"])
        self.style_dim = int(config["style_dim"])
