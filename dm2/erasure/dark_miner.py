"""The Dark Miner loop (paper Section 3.2, Algorithm 1), on the steps of `dm2.erasure.dark_miner_steps`.

Every loop i:
1. mine: optimise an embedding c so the current (adapted) model best denoises k pool
   images of the concept (`mine.candidates` of them; the highest s(c) goes on);
2. verify: s(c), how much the images the current model makes from c move towards the
   pool images (CLIP feature differences from a reference image);
3. circumvent (only if s(c) > tau): train the LoRA so c, and with replay one of the
   earlier circumvented embeddings (this loop's with probability r), no longer brings
   the concept back, while l_p keeps the model unchanged elsewhere;
4. stop: when verification fails (s(c) <= tau) or after `erase.max_loops` loops.

Every loop draws its randomness from (seed, loop index) alone, so a run resumed from
the state after any loop ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers import StableDiffusionPipeline
from tqdm import tqdm

from dm2.core.config import require
from dm2.core.steps import loop_seed
from dm2.erasure.dark_miner_steps import circumvent, circumvent_states, delta_cosine, mine, pick_target
from dm2.erasure.lora import adapters_disabled, add_lora, frozen
from dm2.erasure.params import CircumventParams, EraseParams, MineParams, VerifyParams
from dm2.models.clip import ClipModel
from dm2.models.diffusion import encode_prompts, free_embedding_states, generate, generate_latents, prompt_token_embeddings


@dataclass
class DM2Settings:
    """The params sections a DM2 run is made from (params.yaml's names)."""

    erase: EraseParams
    mine: MineParams
    verify: VerifyParams
    circumvent: CircumventParams


@dataclass
class EraseState:
    """Everything a finished loop leaves behind; saved whole after every loop."""

    fingerprint: str
    embeddings: list[torch.Tensor] = field(default_factory=list)  # mined c, one per loop
    originals: dict[int, torch.Tensor] = field(default_factory=dict)  # x from theta'(c), per verified loop
    log: list[dict[str, Any]] = field(default_factory=list)
    stop: str = ""  # "", "verification" or "max_loops"

    @property
    def verified(self) -> list[int]:
        return [i for i, row in enumerate(self.log) if row["circumvented"]]


def verify_features(pipe: StableDiffusionPipeline, clip: ClipModel, cond: torch.Tensor, n: int, v: VerifyParams) -> torch.Tensor:
    """CLIP features of `n` images the current model makes from `cond` (seeds `v.seed` on)."""
    with frozen(pipe.unet):
        return clip.encode_images(generate(pipe, cond.expand(n, -1, -1), v.seed, v.steps, v.guidance))


def verification_score(
    pipe: StableDiffusionPipeline, clip: ClipModel, cond: torch.Tensor, f_r: torch.Tensor, f_e: torch.Tensor, v: VerifyParams
) -> float:
    """s(c) of the current model: `v.samples` images x_c from `cond` (seeds `v.seed` on),
    against `f_r`, the features of the reference images x_r (`verify_features`)."""
    return delta_cosine(verify_features(pipe, clip, cond, v.samples, v), f_r, f_e)


class DarkMiner:
    """One DM2 run's fixed parts: the model (its UNet gets the LoRA on construction), the
    image pool, and what every loop reuses (anchor and reference states, the start of c,
    the preserve set). `run` then loops on an `EraseState`, fresh or resumed."""

    def __init__(
        self,
        pipe: StableDiffusionPipeline,
        clip: ClipModel,
        pool_latents: torch.Tensor,
        pool_images: torch.Tensor,
        settings: DM2Settings,
        concept_prompt: str | None = None,
    ) -> None:
        """`concept_prompt` (the pool's prompt) is where mining starts when `mine.init` is "concept"."""
        e, m, cp = settings.erase, settings.mine, settings.circumvent
        require(len(pool_latents) >= m.k, "pool.size", f"the pool has {len(pool_latents)} images, mining needs k = {m.k}")
        self.pipe, self.clip, self.settings = pipe, clip, settings
        self.pool_latents = pool_latents
        self.lora_params = add_lora(pipe.unet, e.lora_rank, tuple(e.lora_targets), seed=e.seed)
        self.anchor = encode_prompts(pipe, [cp.anchor])  # c0's states
        self.reference = encode_prompts(pipe, [settings.verify.reference_prompt])  # x_r's
        self.f_reference: torch.Tensor | None = None  # x_r's CLIP features under the current LoRA
        # c starts as a prompt's own token embeddings (after BOS), so it first means that prompt
        if m.init == "concept":
            require(bool(concept_prompt), "mine.init", "is 'concept' but no concept prompt was given")
        self.init = prompt_token_embeddings(pipe, concept_prompt if m.init == "concept" else cp.anchor)[:, 1 : 1 + m.tokens]
        vocab_norm = pipe.text_encoder.get_input_embeddings().weight.norm(dim=-1).max().item()
        self.max_norm = None if m.norm_bound is None else m.norm_bound * vocab_norm
        self.f_pool = clip.encode_images(pool_images)
        self.keep = None
        if cp.preserve:
            # Made once by the original model, from a seed of their own: the same on resume
            keep_states = encode_prompts(pipe, [q for q in cp.preserve for _ in range(cp.preserve_images)])
            with adapters_disabled(pipe.unet), frozen(pipe.unet):
                self.keep = (generate_latents(pipe, keep_states, loop_seed(e.seed, -1), cp.steps, cp.guidance), keep_states)

    def encode(self, c: torch.Tensor) -> torch.Tensor:
        """The UNet states of free embeddings c (`dm2.erasure.dark_miner_steps.Encoder`)."""
        return free_embedding_states(self.pipe, c, self.settings.mine.template)

    def score(self, c: torch.Tensor, picked: torch.Tensor) -> float:
        """s(c) against the pool images `picked` (the ones c was mined on)."""
        v = self.settings.verify
        if self.f_reference is None:  # x_r changes only when the model does (after circumventing)
            self.f_reference = verify_features(self.pipe, self.clip, self.reference, v.references, v)
        return verification_score(self.pipe, self.clip, self.encode(c), self.f_reference, self.f_pool[picked], v)

    def run(self, state: EraseState, on_loop: Callable[[EraseState], None] | None = None) -> EraseState:
        """Loop until `state.stop` is set, calling `on_loop` after every loop (where the
        caller checkpoints: `loop` only ever adds to the state)."""
        tau = self.settings.verify.tau
        bar = tqdm(total=self.settings.erase.max_loops, initial=len(state.log), desc="loops")
        while not state.stop:
            self.loop(state)
            if on_loop is not None:
                on_loop(state)
            bar.update(1)
            row = state.log[-1]
            summary = f"loop {row['loop']}: s(c)={row['s']:.3f} (tau {tau})"
            summary += (
                f", circumvented c_{'/'.join(map(str, row['replayed']))}, l_c={row['l_c']:.4f}, l_p={row['l_p']:.4f}, s(c) after={row['s_after']:.3f}"
                if row["circumvented"]
                else ", stop"
            )
            tqdm.write(summary + f", {row['seconds']:.1f}s")
        bar.close()
        return state

    def loop(self, state: EraseState) -> None:
        """One loop, appended to `state`: its c, its log row, its images x if verified, and
        `state.stop` when it is the last."""
        e, m, v, cp = self.settings.erase, self.settings.mine, self.settings.verify, self.settings.circumvent
        unet, scheduler = self.pipe.unet, self.pipe.scheduler
        i = len(state.log)
        start = time.time()
        g = torch.Generator().manual_seed(loop_seed(e.seed, i))

        # 1. mine and 2. verify: every candidate from its own k pool images; the best goes on
        mined = []  # (s, c, mining losses, pool images) per candidate
        for j in range(m.candidates):
            picked = torch.randperm(len(self.pool_latents), generator=g)[: m.k]
            with frozen(unet):
                c, mine_losses = mine(unet, scheduler, self.pool_latents[picked], self.init, self.encode, m, g, f"loop {i} mine {j}", self.max_norm)
            mined.append((self.score(c, picked), c, mine_losses, picked))
        if m.keep_start:  # the start, unmined (its mining loss: none), last among the candidates
            picked = torch.randperm(len(self.pool_latents), generator=g)[: m.k]
            mined.append((self.score(self.init, picked), self.init.clone(), [None], picked))
        best = max(range(len(mined)), key=lambda j: mined[j][0])
        s, c, mine_losses, picked = mined[best]
        row = {"loop": i, "s": s, "mine_loss": mine_losses[-1], "circumvented": s > v.tau, "replayed": None, "l_c": None, "l_p": None, "s_after": None}
        if len(mined) > 1:
            row["s_candidates"] = [candidate[0] for candidate in mined]
        if m.keep_start:
            row["start_won"] = best == len(mined) - 1
        state.embeddings.append(c)

        # 3. circumvent c (verified: s > tau), replaying earlier verified embeddings
        if s > v.tau:
            with adapters_disabled(unet), frozen(unet):
                state.originals[i] = generate_latents(self.pipe, self.encode(c).expand(cp.images, -1, -1), loop_seed(e.seed, i), cp.steps, cp.guidance)
            # This loop's c first, then the earlier verified ones, for pick_target
            order = [i] + state.verified
            if cp.replay == "loop":
                order = [order[pick_target(len(order), cp.r, g)]]
            targets = [(state.originals[j], circumvent_states(state.embeddings[j], self.anchor, self.encode)) for j in order]
            l_c, l_p = circumvent(unet, scheduler, self.lora_params, targets, cp, g, f"loop {i} circumvent", self.keep)
            self.f_reference = None
            row.update(replayed=order, l_c=sum(l_c[-10:]) / len(l_c[-10:]), l_p=sum(l_p[-10:]) / len(l_p[-10:]))
            # The same c verified again on the circumvented model (paper Fig. S1, before / after)
            row["s_after"] = self.score(c, picked)
        row["seconds"] = round(time.time() - start, 2)
        state.log.append(row)

        # 4. stop: verification failed, or the loop budget is spent
        if s <= v.tau:
            state.stop = "verification"
        elif len(state.log) >= e.max_loops:
            state.stop = "max_loops"
