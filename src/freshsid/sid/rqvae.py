"""RQ-VAE tokenizer: MLP encoder -> residual quantizer -> MLP decoder (torch).

Follows the RQ-VAE used for Semantic IDs (Rajput et al., TIGER, 2023; Lee et
al., 2022): the encoder maps an item embedding to a latent z, level l picks the
codeword e_l nearest to the residual r_l (r_0 = z, r_{l+1} = r_l - e_l), the
decoder reconstructs the embedding from sum_l e_l, and the loss is

    ||x - x_hat||^2 + sum_l ( ||sg[r_l] - e_l||^2 + beta * ||r_l - sg[e_l]||^2 )

with the straight-through estimator carrying the decoder's gradient past the
non-differentiable code choice. Codebooks start from residual k-means on the
initial encoder's latents of the full data (an RQKMeans fit) to avoid
collapse, and codes unused during an epoch are reset to random residuals of
that epoch's last batch.

Training picks codes on its torch batch with the shared distance formula of
:mod:`freshsid.sid.quantize`; ``transform`` runs the shared numpy residual
encoder on the fitted latents, so both follow the same rule (nearest
codeword, lowest index on ties).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from freshsid.artifacts import state_fingerprint
from freshsid.errors import FreshsidError
from freshsid.sid.quantize import (
    as_codebooks,
    as_matrix,
    check_codes,
    check_int,
    dead_code_replacements,
    reconstruct,
    require_fitted,
    residual_encode,
    squared_distances,
)
from freshsid.sid.rqkmeans import RQKMeans

# Rows per forward pass in transform: bounds activation memory on large catalogs.
_TRANSFORM_BATCH = 65_536


def _mlp(dims: Sequence[int], generator: torch.Generator) -> nn.Sequential:
    """Linear layers dims[0] -> ... -> dims[-1] with ReLU between, seeded from ``generator``.

    skip_init + explicit init keeps torch's global RNG untouched; the init
    itself is torch's Linear default (kaiming-uniform, a = sqrt(5)).
    """
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        linear = torch.nn.utils.skip_init(nn.Linear, fan_in, fan_out)
        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
        layers.append(linear)
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE:
    """Residual-quantized autoencoder tokenizer: X (n, d) -> codes (n, n_levels) int32.

    Fitted attributes:
        codebooks_ (L, K, latent_dim) float32 numpy; encoder_, decoder_
        (torch modules, eval mode); loss_history_ (one dict per epoch: loss,
        recon, codebook, commitment, dead_codes); n_features_in_; fit_seconds_.
    """

    def __init__(
        self,
        *,
        n_levels: int = 3,
        codebook_size: int = 256,
        latent_dim: int = 32,
        hidden_dims: Sequence[int] = (128, 64),
        beta: float = 0.25,
        epochs: int = 50,
        batch_size: int = 512,
        lr: float = 3e-3,
        seed: int = 0,
        init_state: Mapping[str, np.ndarray] | None = None,
        device: str = "cpu",
    ) -> None:
        self.n_levels = n_levels
        self.codebook_size = codebook_size
        self.latent_dim = latent_dim
        self.hidden_dims = hidden_dims
        self.beta = beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        # Warm start: the state() of a fitted RQVAE with the same settings and input
        # width; training continues from its encoder, decoder and codebooks (epochs=0
        # keeps them as they are, so the refreshed rows are coded by the old tokenizer).
        self.init_state = init_state
        self.device = device

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters as JSON-able values (warm start recorded by content hash)."""
        return {
            "n_levels": self.n_levels,
            "codebook_size": self.codebook_size,
            "latent_dim": self.latent_dim,
            "hidden_dims": [int(h) for h in self.hidden_dims],
            "beta": float(self.beta),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": float(self.lr),
            "seed": self.seed,
            "init_state": state_fingerprint(self.init_state),
            "device": str(self.device),
        }

    def _checked_params(self) -> dict[str, Any]:
        params = {
            "n_levels": check_int(self.n_levels, name="n_levels", minimum=1),
            "k": check_int(self.codebook_size, name="codebook_size", minimum=2),
            "latent": check_int(self.latent_dim, name="latent_dim", minimum=1),
            "hidden": [check_int(h, name="hidden_dims entry", minimum=1) for h in self.hidden_dims],
            "epochs": check_int(self.epochs, name="epochs", minimum=0),
            "batch_size": check_int(self.batch_size, name="batch_size", minimum=1),
            "seed": check_int(self.seed, name="seed", minimum=0),
        }
        for name in ("beta", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
                raise FreshsidError(f"{name} must be a finite number >= 0, got {value!r}; fix the tokenizer settings.")
        try:
            params["device"] = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise FreshsidError(f"device {self.device!r} is not a torch device; use 'cpu' or 'cuda'.") from None
        if params["device"].type == "cuda" and not torch.cuda.is_available():
            raise FreshsidError(f"device {self.device!r} was asked for but CUDA is not available; use device='cpu'.")
        return params

    def fit(self, X: np.ndarray) -> RQVAE:
        """Train encoder, codebooks and decoder on X (n, d)."""
        p = self._checked_params()
        X = as_matrix(X, min_rows=p["k"])
        n, d = X.shape
        init = None
        if self.init_state is not None:
            init = as_codebooks(self.init_state.get("codebooks"), n_levels=p["n_levels"], codebook_size=p["k"], dim=p["latent"])
        start = time.perf_counter()
        device = p["device"]
        generator = torch.Generator().manual_seed(p["seed"])
        rng = np.random.default_rng(p["seed"])
        encoder = _mlp([d, *p["hidden"], p["latent"]], generator).to(device)
        decoder = _mlp([p["latent"], *reversed(p["hidden"]), d], generator).to(device)
        data = torch.from_numpy(X).to(device)
        if self.init_state is not None:
            _load_weights(encoder, decoder, self.init_state)

        if init is None:
            # k-means init on the untrained encoder's latents of all rows: random
            # codebooks would leave most codes unused from the first step.
            with torch.no_grad():
                latents = _encode(encoder, data)
            tokenizer = RQKMeans(n_levels=p["n_levels"], codebook_size=p["k"], seed=p["seed"])
            init = tokenizer.fit(latents).codebooks_
        codebooks = nn.Parameter(torch.from_numpy(init.copy()).to(device))
        # The per-batch work (a few hundred rows through layers of ~100 units) is
        # too small to split across threads: on 2 shared cores, torch's default
        # of 2 threads made a 12k-item fit ~8x slower (141 s vs 18 s) from
        # OpenMP spin-waiting. So CPU training runs on one thread, restored after.
        previous_threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(1)
        try:
            history = self._train(encoder, decoder, codebooks, data, p, generator, rng)
        finally:
            torch.set_num_threads(previous_threads)

        self.encoder_ = encoder.eval()
        self.decoder_ = decoder.eval()
        self.codebooks_ = codebooks.detach().cpu().numpy().copy()
        self.loss_history_ = history
        self.n_features_in_ = d
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def state(self) -> dict[str, np.ndarray]:
        """Encoder, decoder and codebooks as numpy arrays (what ``init_state`` takes)."""
        require_fitted(self)
        weights = {f"{name}.{k}": v.detach().cpu().numpy().copy()
                   for name, module in (("encoder", self.encoder_), ("decoder", self.decoder_))
                   for k, v in module.state_dict().items()}
        return {"codebooks": self.codebooks_.copy(), **weights}

    def _train(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        codebooks: nn.Parameter,
        data: torch.Tensor,
        p: dict[str, Any],
        generator: torch.Generator,
        rng: np.random.Generator,
    ) -> list[dict[str, float]]:
        """Mini-batch Adam over data (n, d) for p["epochs"] epochs; one history dict per epoch."""
        n, device = data.shape[0], data.device
        optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters(), codebooks], lr=self.lr)
        history: list[dict[str, float]] = []
        for _ in range(p["epochs"]):
            encoder.train()
            decoder.train()
            usage = np.zeros((p["n_levels"], p["k"]), dtype=np.int64)
            totals = np.zeros(4)
            order = torch.randperm(n, generator=generator).to(device)
            for first in range(0, n, p["batch_size"]):
                batch = data[order[first : first + p["batch_size"]]]
                terms, codes, residuals = self._step(encoder, decoder, codebooks, batch)
                optimizer.zero_grad(set_to_none=True)
                terms[0].backward()
                optimizer.step()
                totals += np.array([t.item() for t in terms]) * batch.shape[0]
                for level in range(p["n_levels"]):
                    usage[level] += np.bincount(codes[:, level], minlength=p["k"])
            # Dead-code reset: codes no row chose this epoch move onto random
            # residuals of the last batch at their level, so they can win rows again.
            n_dead = 0
            with torch.no_grad():
                for level in range(p["n_levels"]):
                    dead, rows = dead_code_replacements(usage[level], residuals.shape[0], rng)
                    dead_t, rows_t = torch.from_numpy(dead).to(device), torch.from_numpy(rows).to(device)
                    codebooks[level, dead_t] = residuals[rows_t, level]
                    n_dead += dead.size
            names = ("loss", "recon", "codebook", "commitment")
            history.append({**dict(zip(names, (totals / n).tolist())), "dead_codes": float(n_dead)})
        return history

    def _step(
        self, encoder: nn.Module, decoder: nn.Module, codebooks: torch.Tensor, batch: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], np.ndarray, torch.Tensor]:
        """One forward pass on batch (b, d).

        Returns (loss, recon, codebook, commitment) tensors, codes (b, L) numpy
        and the per-level residuals (b, L, latent), detached, for dead-code reset.
        """
        z = encoder(batch)  # (b, latent)
        residual = z
        quantized = torch.zeros_like(z)
        codebook_loss = commitment = z.new_zeros(())
        codes, residuals = [], []
        for level in range(codebooks.shape[0]):
            with torch.no_grad():
                index = squared_distances(residual, codebooks[level]).argmin(1)  # (b,)
            chosen = codebooks[level][index]  # (b, latent)
            codes.append(index)
            residuals.append(residual.detach())
            codebook_loss = codebook_loss + F.mse_loss(chosen, residual.detach())
            commitment = commitment + F.mse_loss(residual, chosen.detach())
            quantized = quantized + chosen
            residual = residual - chosen.detach()
        # Straight-through: the decoder sees the quantized latent, gradients flow to z.
        recon = F.mse_loss(decoder(z + (quantized - z).detach()), batch)
        loss = recon + codebook_loss + self.beta * commitment
        return (loss, recon, codebook_loss, commitment), torch.stack(codes, 1).cpu().numpy(), torch.stack(residuals, 1)

    def _latents(self, X: np.ndarray) -> np.ndarray:
        require_fitted(self)
        X = as_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise FreshsidError(
                f"X has {X.shape[1]} columns but the tokenizer was fitted on {self.n_features_in_}; "
                "pass embeddings from the same model."
            )
        device = next(self.encoder_.parameters()).device
        with torch.no_grad():
            return _encode(self.encoder_, torch.from_numpy(X).to(device))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Codes of X (n, d) -> (n, L) int32; deterministic, no gradients."""
        return residual_encode(self._latents(X), self.codebooks_)

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """fit(X) then transform(X): (n, d) -> (n, L) int32."""
        return self.fit(X).transform(X)

    def inverse_transform(self, codes: np.ndarray) -> np.ndarray:
        """Decoded embeddings from codes (n, L) -> (n, d) float32."""
        require_fitted(self)
        latent = reconstruct(check_codes(codes, self.codebooks_), self.codebooks_)
        device = next(self.decoder_.parameters()).device
        with torch.no_grad():
            return _encode(self.decoder_, torch.from_numpy(latent).to(device))


def _load_weights(encoder: nn.Module, decoder: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Copy a previous fit's encoder and decoder weights in; refuse ones of another shape."""
    for name, module in (("encoder", encoder), ("decoder", decoder)):
        own = module.state_dict()
        given = {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
        if {k: tuple(v.shape) for k, v in own.items()} != {k: tuple(np.shape(v)) for k, v in given.items()}:
            raise FreshsidError(
                f"The warm-start state's {name} does not fit these settings; "
                "warm-start from an RQ-VAE fitted with the same sizes on embeddings of the same width."
            )
        module.load_state_dict({k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in given.items()})


def _encode(module: nn.Module, data: torch.Tensor) -> np.ndarray:
    """Apply ``module`` to data (n, d_in) in blocks -> (n, d_out) float32 numpy (call under no_grad)."""
    parts = [module(data[i : i + _TRANSFORM_BATCH]).cpu() for i in range(0, data.shape[0], _TRANSFORM_BATCH)]
    return np.ascontiguousarray(torch.cat(parts).numpy(), dtype=np.float32)
